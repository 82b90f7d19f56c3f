#!/usr/bin/env bash
# Waits until every running container of the Compose project is healthy, at most $1 seconds
# (default 90). On time-out, names each service that is not healthy and shows its last log lines.
# Needs COMPOSE: the compose command with its -p and -f flags.
set -euo pipefail
limit=${1:-90}
: "${COMPOSE:?set COMPOSE to the compose command, e.g. 'docker-compose -p registro -f compose/docker-compose.yml'}"
start=$SECONDS
while :; do
  ids=$($COMPOSE ps -q)
  waiting=()
  for id in $ids; do
    state=$(docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
    read -r name status health <<<"$state"
    if [ "$status" != running ] || { [ "$health" != healthy ] && [ "$health" != none ]; }; then
      waiting+=("${name#/}:$status/$health")
    fi
  done
  if [ -n "$ids" ] && [ ${#waiting[@]} -eq 0 ]; then
    echo "all services healthy after $((SECONDS - start)) s"
    exit 0
  fi
  if [ $((SECONDS - start)) -ge "$limit" ]; then
    echo "compose-wait: not healthy after ${limit} s: ${waiting[*]:-no containers}" >&2
    for w in "${waiting[@]}"; do
      name=${w%%:*}
      echo "--- last log lines of $name" >&2
      docker logs --tail 20 "$name" >&2 || true
    done
    exit 1
  fi
  sleep 1
done
