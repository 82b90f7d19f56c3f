#!/usr/bin/env bash
# make swarm-up: stack `registro` (compose/stack.yml) on Docker Swarm, waited for until healthy.
# The Makefile has built the images (make images) and the certificates (make certs) first.
# - An engine in no swarm is made a single-node swarm (`docker swarm init`); the node's id (and
#   whether docker_gwbridge was made with it) is written to target/swarm-made-by-registro so that
#   `make swarm-down` leaves that swarm again, and only that one.
# - Each datanode is pinned to the node that keeps its volume: REGISTRO_DATANODE<N>_NODE, a
#   node's host name, by default this node.
# - Deploying again over a running stack updates it in place.
# Waits at most $1 seconds (default 120) for every task to be running and healthy and every
# headnode's registro.v1.Store SERVING; on time-out it names the services that are not and shows
# their tasks and last log lines.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-120}
stack=registro
marker=target/swarm-made-by-registro
start=$SECONDS

# The headnode publishes 5000 and 9500 on the host: a container already there (make up) would
# keep its task from starting.
for port in 5000 9500; do
  for id in $(docker ps -q --filter "publish=$port"); do
    if [ "$(docker inspect --format '{{index .Config.Labels "com.docker.stack.namespace"}}' "$id")" != "$stack" ]; then
      echo "swarm-up: port $port is published by container $(docker inspect --format '{{.Name}}' "$id" | tr -d /) (make down stops make up's)" >&2
      exit 1
    fi
  done
done

state=$(docker info --format '{{.Swarm.LocalNodeState}}')
case "$state" in
  inactive)
    echo "swarm-up: this engine is in no swarm; starting a single-node swarm (make swarm-down leaves it again)"
    # swarm init also makes the bridge network docker_gwbridge, which leaving does not remove.
    gwbridge=kept
    docker network inspect docker_gwbridge >/dev/null 2>&1 || gwbridge=made
    mkdir -p target
    if ! docker swarm init >/dev/null 2>target/swarm-init.err; then
      # More than one address to choose from: the one of the default route.
      addr=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')
      docker swarm init --advertise-addr "${addr:-127.0.0.1}" >/dev/null || { cat target/swarm-init.err >&2; exit 1; }
    fi
    rm -f target/swarm-init.err
    echo "$(docker info --format '{{.Swarm.NodeID}}') docker_gwbridge=$gwbridge" >"$marker"
    ;;
  active)
    if [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" != true ]; then
      echo "swarm-up: this engine is a swarm worker; run make swarm-up on a manager" >&2
      exit 1
    fi
    ;;
  *)
    echo "swarm-up: this engine's swarm state is '$state'; expected inactive or active" >&2
    exit 1
    ;;
esac

here=$(docker info --format '{{.Name}}')
for n in 1 2 3; do
  var=REGISTRO_DATANODE${n}_NODE
  export "$var=${!var:-$here}"
done

docker stack deploy --resolve-image never -c compose/stack.yml "$stack"

# Every service's tasks: desired running and the container healthy.
services=(headnode datanode1 datanode2 datanode3)
while :; do
  waiting=()
  for s in "${services[@]}"; do
    running=$(docker service ps --filter desired-state=running --format '{{.CurrentState}}' "${stack}_$s" 2>/dev/null | grep -c '^Running' || true)
    healthy=$(docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$s" --filter health=healthy | wc -l)
    if [ "$running" -lt 1 ] || [ "$healthy" -lt "$running" ]; then
      waiting+=("$s")
    fi
  done
  # The headnodes' health check is liveness; ready is registro.v1.Store SERVING (--replicas
  # datanodes SERVING behind it), asked inside each headnode container.
  if [ ${#waiting[@]} -eq 0 ]; then
    for id in $(docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_headnode"); do
      docker exec "$id" /usr/local/bin/client --addr https://127.0.0.1:5000 --timeout 1s health \
        --service registro.v1.Store >/dev/null 2>&1 || { waiting+=("headnode(registro.v1.Store)"); break; }
    done
  fi
  if [ ${#waiting[@]} -eq 0 ]; then
    echo "swarm-up: stack $stack healthy after $((SECONDS - start)) s (headnode on port 5000 of every swarm node)"
    exit 0
  fi
  if [ $((SECONDS - start)) -ge "$limit" ]; then
    echo "swarm-up: not healthy after ${limit} s: ${waiting[*]}" >&2
    for s in "${waiting[@]}"; do
      echo "--- tasks of ${stack}_$s" >&2
      docker service ps --no-trunc "${stack}_$s" >&2 || true
      echo "--- last log lines of ${stack}_$s" >&2
      docker service logs --tail 20 "${stack}_$s" >&2 || true
    done
    exit 1
  fi
  sleep 1
done
