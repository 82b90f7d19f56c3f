#!/usr/bin/env bash
# make test-kubernetes-docker: deploy/kubernetes played by plain Docker, since no Kubernetes
# cluster runs here. What a cluster would do is imitated, the rest is the manifests' own:
#   - each container gets the args of its manifest (read with the venv's PyYAML), $(POD_NAME)
#     replaced by its pod name (datanode-0…2);
#   - the Services' DNS names are network aliases: datanode-N.datanode for each datanode (the
#     headless Service), headnode and headnode-headless for both headnodes (a name with two
#     addresses, as a headless Service has);
#   - the securityContext: read-only root filesystem, user 65532, every capability dropped, no
#     new privileges; the Secrets' files as a Secret volume with fsGroup 65532 and defaultMode
#     0440 shows them; a volume per datanode; an in-memory /logs (emptyDir) for the headnodes;
#   - the certificates of `make certs-kubernetes` (certs/kubernetes/).
# Checks, with bounded polling: both headnodes ready on their --health-listen port (plaintext
# gRPC health, registro.v1.Store), as the readiness probe asks; every datanode's health port
# SERVING; each headnode's Status over mutual TLS lists datanode-0…2 SERVING (each registered
# with both headnodes through headnode-headless, and was dialled at its advertised name);
# Stores through the name `headnode` from a container. Everything it made is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
K=deploy/kubernetes
PY=.tools/venv/bin/python
GRPCURL=${GRPCURL:-.tools/venv/bin/grpcurl}
bin=target/x86_64-unknown-linux-gnu/release/client
run=k8s-$$
net=registro-$run
secrets=$(mktemp -d /tmp/registro-test-kubernetes.XXXXXX)
passed=0
failed=0

ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*" >&2; failed=$((failed + 1)); }
cleanup() {
  status=$?
  if [ "$failed" -gt 0 ]; then
    for c in $(docker ps -aq --filter "label=registro.test=$run"); do
      echo "--- last log lines of $(docker inspect --format '{{.Name}}' "$c")" >&2
      docker logs --tail 10 "$c" >&2 2>&1 || true
    done
  fi
  docker rm -f $(docker ps -aq --filter "label=registro.test=$run") >/dev/null 2>&1 || true
  docker volume rm $(docker volume ls -q --filter "label=registro.test=$run") >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$secrets"
  exit $status
}
trap cleanup EXIT

within() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
# The args of the single container of manifest $1, one a line, $(POD_NAME) as $2.
args_of() {
  "$PY" - "$1" "$2" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for a in doc["spec"]["template"]["spec"]["containers"][0]["args"]:
    print(a.replace("$(POD_NAME)", sys.argv[2]))
EOF
}
ip_of() { docker inspect --format "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"; }
# Plaintext gRPC health of $1 (host:port) for service $2, as the kubelet's gRPC probe asks.
probe() { env -u REGISTRO_TLS_CA -u REGISTRO_TLS_CERT -u REGISTRO_TLS_KEY "$bin" --addr "http://$1" --timeout 1s health --service "$2"; }
# The datanodes headnode container $1 reports SERVING, over mutual TLS as a client.
serving_at() {
  "$GRPCURL" -cacert certs/kubernetes/ca.pem -cert certs/kubernetes/client.pem -key certs/kubernetes/client-key.pem \
    -servername headnode-headless "$(ip_of "$1"):5000" registro.v1.Heartbeat/Status \
    | "$PY" -c 'import json, sys; print(" ".join(sorted(d["name"] for d in json.load(sys.stdin).get("datanodes", []) if d.get("status") == "SERVING")))'
}
all_serving_at() { [ "$(serving_at "$1")" = "datanode-0 datanode-1 datanode-2" ]; }

# The Secret volumes as the kubelet writes them: group fsGroup, mode defaultMode.
mkdir -p "$secrets/headnode" "$secrets/datanode"
cp certs/kubernetes/headnode/* "$secrets/headnode/"
cp certs/kubernetes/datanode/* "$secrets/datanode/"
# (Not root: files of another group cannot be made, so readable by all.)
if chgrp -R 65532 "$secrets" 2>/dev/null; then chmod 0440 "$secrets"/*/*; else chmod 0444 "$secrets"/*/*; fi
chmod 0755 "$secrets" "$secrets"/*

docker network create --label "registro.test=$run" "$net" >/dev/null
pod=(--label "registro.test=$run" --network "$net" --read-only --user 65532:65532 --cap-drop ALL
  --security-opt no-new-privileges -e RUST_LOG=info)
for n in 0 1 2; do
  mapfile -t args < <(args_of $K/datanode-statefulset.yaml "datanode-$n")
  docker volume create --label "registro.test=$run" "$run-data-datanode-$n" >/dev/null
  docker run -d --name "$run-datanode-$n" --hostname "datanode-$n" --network-alias "datanode-$n.datanode" "${pod[@]}" \
    -v "$secrets/datanode:/certs:ro" -v "$run-data-datanode-$n:/data" registro-datanode:latest "${args[@]}" >/dev/null
done
mapfile -t args < <(args_of $K/headnode-deployment.yaml unused)
for h in a b; do
  docker run -d --name "$run-headnode-$h" --network-alias headnode --network-alias headnode-headless "${pod[@]}" \
    --tmpfs /logs:uid=65532,gid=65532 -v "$secrets/headnode:/certs:ro" registro-headnode:latest "${args[@]}" >/dev/null
done

start=$SECONDS
for h in a b; do
  if within 60 probe "$(ip_of "$run-headnode-$h"):5001" registro.v1.Store; then
    ok "headnode $h ready: plaintext gRPC health on 5001 says registro.v1.Store SERVING ($((SECONDS - start)) s)"
  else
    fail "headnode $h not ready on 5001: $(probe "$(ip_of "$run-headnode-$h"):5001" registro.v1.Store 2>&1)"
  fi
  probe "$(ip_of "$run-headnode-$h"):5001" "" >/dev/null 2>&1 && ok "headnode $h live (service \"\" on 5001)" || fail "headnode $h liveness on 5001"
done
for n in 0 1 2; do
  probe "$(ip_of "$run-datanode-$n"):6001" registro.v1.Store >/dev/null 2>&1 \
    && ok "datanode-$n ready on 6001 (its volume writable by user 65532 on a read-only root)" \
    || fail "datanode-$n not ready on 6001: $(probe "$(ip_of "$run-datanode-$n"):6001" registro.v1.Store 2>&1)"
done
for h in a b; do
  if within 20 all_serving_at "$run-headnode-$h"; then
    ok "headnode $h: datanode-0, datanode-1, datanode-2 SERVING (registered through headnode-headless, dialled as datanode-N.datanode under mutual TLS)"
  else
    fail "headnode $h sees SERVING: '$(serving_at "$run-headnode-$h" 2>&1)'"
  fi
done
if out=$(docker run --rm --label "registro.test=$run" --network "$net" -v "$PWD/certs/kubernetes:/c:ro" --tmpfs /out --user 0 \
  registro-client:latest --addr https://headnode:5000 --tls-ca /c/ca.pem --tls-cert /c/client.pem \
  --tls-key /c/client-key.pem send --count 6 --log /out/client.log 2>&1); then
  ok "6 Stores through the name headnode: $(grep -c 'stored on datanode-' <<<"$out") receipts"
else
  fail "Stores through the name headnode: $out"
fi
user=$(docker inspect --format '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}}' "$run-datanode-0")
[ "$user" = "65532:65532 true [ALL]" ] && ok "containers ran as 65532 on a read-only root with no capabilities" || fail "container settings: $user"

echo "kubernetes-docker: $passed passed, $failed failed"
[ $failed -eq 0 ]
