#!/usr/bin/env bash
# make swarm-down: removes stack `registro` and its secrets and network, and waits until they are
# gone; the volumes stay (as with make down). Leaves the swarm only when make swarm-up started it
# (target/swarm-made-by-registro names this node), and says which it did; then also removes the
# network docker_gwbridge if swarm init made it.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-60}
stack=registro
marker=target/swarm-made-by-registro
start=$SECONDS

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  echo "swarm-down: this engine is in no swarm; nothing to remove"
  rm -f "$marker"
  exit 0
fi

docker stack rm "$stack" >/dev/null 2>&1 || true
label="label=com.docker.stack.namespace=$stack"
left() {
  {
    docker service ls -q --filter "$label"
    docker secret ls -q --filter "$label"
    docker network ls -q --filter "$label"
    docker ps -aq --filter "$label"
  } 2>/dev/null | wc -l
}
until [ "$(left)" -eq 0 ]; do
  if [ $((SECONDS - start)) -ge "$limit" ]; then
    echo "swarm-down: stack $stack still has $(left) services, secrets, networks or containers after ${limit} s" >&2
    exit 1
  fi
  sleep 0.5
done
echo "swarm-down: stack $stack removed (services, secrets, network) in $((SECONDS - start)) s; its volumes stay (docker volume ls --filter $label)"

node=$(docker info --format '{{.Swarm.NodeID}}')
read -r made gwbridge <"$marker" 2>/dev/null || true
if [ -f "$marker" ] && [ "${made:-}" = "$node" ]; then
  others=$(docker stack ls --format '{{.Name}}' 2>/dev/null | wc -l)
  if [ "$others" -gt 0 ]; then
    echo "swarm-down: make swarm-up started this swarm, but other stacks run in it now; the swarm stays (docker swarm leave --force leaves it)"
  else
    docker swarm leave --force >/dev/null
    echo "swarm-down: left the single-node swarm that make swarm-up started; the engine is in no swarm again"
    if [ "${gwbridge:-}" = docker_gwbridge=made ]; then
      # Gone with the swarm's last container; removed once nothing is attached any more.
      for _ in $(seq 1 20); do docker network rm docker_gwbridge >/dev/null 2>&1 && break; sleep 0.5; done
      if docker network inspect docker_gwbridge >/dev/null 2>&1; then
        attached=$(docker network inspect --format '{{len .Containers}}' docker_gwbridge 2>/dev/null || echo "?")
        if [ "$attached" = 0 ]; then
          # Seen after `docker kill` of swarm tasks: the engine refuses with "has active
          # endpoints" while listing none, for good (until the daemon restarts).
          echo "swarm-down: docker_gwbridge (made by swarm init) is left: the Docker engine still counts an endpoint on it with no container attached (an engine leak; it can be removed after the daemon restarts: docker network rm docker_gwbridge)" >&2
        else
          echo "swarm-down: could not remove docker_gwbridge (made by swarm init): $attached containers still attached; docker network rm docker_gwbridge" >&2
        fi
      fi
    fi
  fi
  rm -f "$marker"
else
  echo "swarm-down: the swarm stays: it was there before make swarm-up"
  rm -f "$marker"
fi
