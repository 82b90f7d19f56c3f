#!/usr/bin/env bash
# The headnode's and the datanode's code laid out by a profile of real Stores, with BOLT (LLVM's
# post-link optimiser; Debian's bolt-15). A forwarded Store runs about 100 000 instructions
# spread over tonic, hyper, h2, tokio, rustls and registro, and between two Stores the other
# processes on the machine evict them from the caches; BOLT puts the code a Store runs next to
# each other, and the rest out of the way. Measured in docs/bench-notes.md.
#
# Usage: scripts/bolt.sh DIR
#   DIR holds headnode, datanode and client from a release build linked with --emit-relocs
#   (.cargo/config.toml does that for cargo's builds for this machine: `make build`). Not for the
#   static builds of the images: bolt-15 cannot instrument a static-pie binary (the instrumented
#   copy crashes), and a static binary that is not position-independent would give up ASLR.
#   Replaces DIR/headnode and DIR/datanode with their optimised builds. A binary already
#   optimised (it carries BOLT's .note.bolt_info section) is left as it is. Each optimised build
#   is kept in DIR/bolt/ with the checksum of what it was made from: cargo puts its own build back
#   on every `cargo build`, even when nothing changed, and then this copies the kept one back in a
#   second instead of profiling again.
#
# How: instrumented copies run a cluster on loopback (three datanodes, the headnode), once
# in plaintext and once under mutual TLS, while `client bench` sends Stores at 1, 8 and 64 in
# flight and `client list` reads them back; each process writes its profile when it exits
# (SIGTERM), and llvm-bolt lays out the original binaries by them. About a minute.
#
# Without llvm-bolt-15 (and without root and apt-get to install it) it says so and leaves the
# binaries as cargo built them: they behave the same, only slower.
set -euo pipefail
# Each profiling run sets its own TLS flags, whatever certificates the shell has exported.
unset REGISTRO_TLS_CA REGISTRO_TLS_CERT REGISTRO_TLS_KEY
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/bolt.sh DIR (of release binaries)}
bolt=llvm-bolt-15
merge=merge-fdata-15
# Debian's bolt-15 looks for its runtime under /usr/lib/ by a name relative to it.
runtime=llvm-15/lib/libbolt_rt_instr.a

kept=$dir/bolt
# Puts FILE $2 in place of DIR/$1 (a new file: cargo's is a hard link into its deps/ folder).
install_as() {
  cp "$2" "$dir/$1.bolt-new" && chmod 755 "$dir/$1.bolt-new" && mv -f "$dir/$1.bolt-new" "$dir/$1"
}
todo=()
declare -A source_sum=()
for name in headnode datanode; do
  [ -x "$dir/$name" ] || { echo "bolt: no $dir/$name (build first)" >&2; exit 1; }
  if readelf -S "$dir/$name" | grep -q '\.note\.bolt_info'; then
    echo "bolt: $dir/$name is already optimised"
    continue
  fi
  source_sum[$name]=$(sha256sum "$dir/$name" | cut -d' ' -f1)
  if [ -f "$kept/$name" ] && [ "$(cat "$kept/$name.source" 2>/dev/null)" = "${source_sum[$name]}" ]; then
    install_as "$name" "$kept/$name"
    echo "bolt: $dir/$name optimised (as before: the same build, kept in $kept/)"
  else
    todo+=("$name")
  fi
done
((${#todo[@]})) || exit 0
[ -x "$dir/client" ] || { echo "bolt: no $dir/client (it drives the profiling run)" >&2; exit 1; }
for name in "${todo[@]}"; do
  readelf -S "$dir/$name" | grep -q '\.rela\.text' || {
    echo "bolt: $dir/$name has no relocations; build it with RUSTFLAGS='-C link-arg=-Wl,--emit-relocs'" >&2
    exit 1
  }
done

if ! command -v "$bolt" >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "bolt: apt-get install bolt-15"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bolt-15 >/dev/null; } ||
      echo "bolt: apt-get could not install bolt-15" >&2
  fi
  if ! command -v "$bolt" >/dev/null; then
    echo "bolt: $bolt is not installed (Debian: apt-get install bolt-15); $dir/{${todo[*]// /,}} stay as built, unoptimised" >&2
    exit 0
  fi
fi

work=$(mktemp -d)
# The profiled cluster logs as a default one does (every message at info), and must log its
# addresses whatever the caller's RUST_LOG says (make bench exports warn).
export RUST_LOG=info
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"
bin=$dir # the client, for procs.sh's wait_serving
mkdir -p "$work/profile"
# What the profiling run starts: an instrumented copy of each binary to optimise, and the other
# (already optimised, so BOLT would refuse to instrument it) as it is.
declare -A exe=([headnode]=$dir/headnode [datanode]=$dir/datanode)
for name in "${todo[@]}"; do
  exe[$name]=$work/$name.instrumented
  "$bolt" "$dir/$name" -o "$work/$name.instrumented" -instrument \
    -instrumentation-file="$work/profile/$name" -instrumentation-file-append-pid \
    --runtime-instrumentation-lib="$runtime" >"$work/$name.instrument.log" 2>&1 || {
    cat "$work/$name.instrument.log" >&2
    exit 1
  }
done

# A server's TLS flags as holder $1 of the run's certificates (nothing in plaintext).
tls() { [ "$run" = tls ] && echo --tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/$1.pem" --tls-key "$work/certs/$1-key.pem"; true; }

# One cluster of the instrumented binaries, loaded; $1 is plain or tls.
profile_run() {
  run=$1
  local d addrs=() url data_tls head_tls
  read -r -a head_tls <<<"$(tls headnode)"
  mkdir -p "$work/$run"
  for d in 1 2 3; do
    read -r -a data_tls <<<"$(tls "datanode$d")"
    "${exe[datanode]}" --listen 127.0.0.1:0 --name "datanode$d" --data-dir "$work/$run/datanode$d" \
      --fsync never "${data_tls[@]}" </dev/null >/dev/null 2>"$work/$run/datanode$d.err" &
    pids+=($!)
    addrs+=("$(addr_of "$work/$run/datanode$d.err")")
  done
  "${exe[headnode]}" --listen 127.0.0.1:0 --datanodes "$(IFS=,; echo "${addrs[*]}")" "${head_tls[@]}" \
    --heartbeat-log "$work/$run/heartbeat.log" --registro-log "$work/$run/registro.log" \
    </dev/null >/dev/null 2>"$work/$run/headnode.err" &
  pids+=($!)
  url=$(addr_of "$work/$run/headnode.err")
  # The client's certificate, by its environment (the servers have started with their own).
  if [ "$run" = tls ]; then
    export REGISTRO_TLS_CA=$work/certs/ca.pem REGISTRO_TLS_CERT=$work/certs/client.pem \
      REGISTRO_TLS_KEY=$work/certs/client-key.pem
  fi
  wait_serving "$url"
  local client=("$bin/client" --addr "$url" --timeout 10s)
  "${client[@]}" bench --concurrency 1 --connections 1 --requests 2000 --duration 20s --json >/dev/null
  "${client[@]}" bench --concurrency 8 --connections 2 --requests 8000 --duration 20s --json >/dev/null
  "${client[@]}" bench --concurrency 64 --connections 4 --requests 30000 --duration 20s --json >/dev/null
  "${client[@]}" list >/dev/null
  unset REGISTRO_TLS_CA REGISTRO_TLS_CERT REGISTRO_TLS_KEY
  # Each process writes its profile as it exits.
  for pid in "${pids[@]}"; do stop "$pid"; done
  pids=()
}

echo "bolt: profiling ${todo[*]} under load (plaintext, then mutual TLS)"
"$dir/client" tls ca --dir "$work/certs" >/dev/null
for holder in headnode:headnode datanode:datanode1 datanode:datanode2 datanode:datanode3 client:client; do
  "$dir/client" tls cert --dir "$work/certs" --role "${holder%:*}" --name "${holder#*:}" --host 127.0.0.1 >/dev/null
done
profile_run plain
profile_run tls

for name in "${todo[@]}"; do
  profiles=("$work/profile/$name".*.fdata)
  [ -e "${profiles[0]}" ] || { echo "bolt: the instrumented $name wrote no profile" >&2; exit 1; }
  "$merge" "${profiles[@]}" >"$work/$name.fdata" 2>"$work/$name.merge.log"
  "$bolt" "$dir/$name" -o "$work/$name.optimised" -data="$work/$name.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=hfsort+ -split-functions -split-all-cold -split-eh \
    -icf=1 -use-gnu-stack -dyno-stats >"$work/$name.optimise.log" 2>&1 || {
    cat "$work/$name.optimise.log" >&2
    exit 1
  }
  mkdir -p "$kept"
  mv -f "$work/$name.optimised" "$kept/$name"
  echo "${source_sum[$name]}" >"$kept/$name.source"
  install_as "$name" "$kept/$name"
  echo "bolt: $dir/$name optimised ($(grep -o '[0-9]* out of [0-9]* functions in the binary ([0-9.]*%) have non-empty execution profile' "$work/$name.optimise.log"))"
done
