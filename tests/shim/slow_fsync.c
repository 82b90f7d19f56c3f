/*
 * slow_fsync: an LD_PRELOAD shim that makes a process's disk look slow. Every fsync and
 * fdatasync sleeps REGISTRO_SLOW_FSYNC_MS milliseconds before the real call, and so does every
 * pwrite to a file opened O_DSYNC (the datanode's journal opened O_DIRECT | O_DSYNC, whose
 * writes are its flushes). tests/slow_disk.rs
 * compiles it at test time (cc -shared -fPIC) and preloads it into one datanode.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void slow_down(void) {
    static int announced;
    const char *ms = getenv("REGISTRO_SLOW_FSYNC_MS");
    long delay = ms ? atol(ms) : 0;
    if (delay <= 0) {
        return;
    }
    if (!announced) {
        /* Proof for the test that the shim is in effect; written once. */
        static const char line[] = "slow_fsync: delaying every fsync\n";
        announced = 1;
        (void)!write(2, line, sizeof line - 1);
    }
    struct timespec left = {delay / 1000, (delay % 1000) * 1000000L};
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    slow_down();
    return real(fd);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) {
        real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags != -1 && (flags & O_DSYNC) == O_DSYNC) {
        slow_down();
    }
    return real(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite64(fd, buf, count, offset);
}
