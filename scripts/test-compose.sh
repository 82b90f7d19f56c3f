#!/usr/bin/env bash
# make test-compose: the cluster in Docker under a fault. Brings the project up with `make up`
# (replacing a cluster that is already up; data/ is kept), then checks, with bounded polling:
#   every service healthy; a Store through port 5000 with grpcurl from the host; docker kill of
#   datanode2 shows UNREACHABLE in the heartbeat log on the host (and on the status page, port
#   9500) while Stores keep succeeding; the datanodes' metrics on 9601-9603 count their Stores;
#   restarting it shows SERVING and its earlier messages are still in its data file; a fourth
#   datanode registers and gets traffic; make down leaves no container running. All of it under
#   mutual TLS with the certificates of `make certs`; plaintext on port 5000 is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker-compose}"
extra=target/compose-extra.yml
DC="$COMPOSE -p registro -f compose/docker-compose.yml"
GRPCURL=${GRPCURL:-.tools/venv/bin/grpcurl}
export REGISTRO_TLS_CA=certs/ca.pem REGISTRO_TLS_CERT=certs/client.pem REGISTRO_TLS_KEY=certs/client-key.pem
client=(target/x86_64-unknown-linux-gnu/release/client --addr 127.0.0.1:5000 --timeout 3s)
tls=(-cacert certs/ca.pem -cert certs/client.pem -key certs/client-key.pem -servername headnode)
heartbeat=data/headnode/heartbeat.log
passed=0
failed=0

ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*" >&2; failed=$((failed + 1)); }
cleanup() { $DC down --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

# Polls "$@" every 0.2 s until it succeeds, at most $limit seconds.
within() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

status_is() { "${client[@]}" status | awk -v n="$1" -v s="$2" '$1 == n && $3 == s { found = 1 } END { exit !found }'; }
serving_count() { "${client[@]}" status | awk '$3 == "SERVING"' | wc -l; }
# GET http://127.0.0.1:$1$2 over bash's /dev/tcp (no curl needed): the whole answer.
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3 && cat <&3
  exec 3<&-
}
# The status page's row for datanode $1 (the datanodes table) shows status $2.
page_shows() { http_get 9500 / | grep "class=\"name\">$1</td>" | grep -q ">$2<"; }
logged_after() { # name word line-count-before
  tail -n +"$(($3 + 1))" "$heartbeat" | grep -q " $1 [^ ]* $2 "
}

start=$SECONDS
make up
echo "make up took $((SECONDS - start)) s"

[ "$(serving_count)" -eq 3 ] && ok "three datanodes SERVING" || fail "three datanodes SERVING: $("${client[@]}" status)"

reply=$("$GRPCURL" "${tls[@]}" -d '{"message":"Hola desde el host"}' localhost:5000 registro.v1.Store/Store)
if grep -q '"receipt": "Message '"'"'Hola desde el host'"'"' stored on datanode' <<<"$reply"; then
  ok "Store through port 5000 with grpcurl and the client certificate"
else
  fail "Store through port 5000 with grpcurl: $reply"
fi
if "$GRPCURL" -plaintext -connect-timeout 2 localhost:5000 list >/dev/null 2>&1; then
  fail "grpcurl -plaintext was served on port 5000"
else
  ok "grpcurl -plaintext refused on port 5000"
fi

# Make sure datanode2 holds something before it is killed.
for _ in $(seq 1 60); do
  "${client[@]}" send --count 1 --log data/client/host.log >/dev/null 2>&1
  [ "$("${client[@]}" list --datanode datanode2 | wc -l)" -gt 0 ] && break
done
before_ids=$("${client[@]}" list --datanode datanode2 | awk '{print $2}')
[ -n "$before_ids" ] && ok "datanode2 holds $(wc -l <<<"$before_ids") messages before the kill" || fail "datanode2 got no messages"

lines=$(wc -l <"$heartbeat")
kill_start=$SECONDS
docker kill "$($DC ps -q datanode2)" >/dev/null
if within 15 logged_after datanode2 UNREACHABLE "$lines"; then
  ok "datanode2 UNREACHABLE in the heartbeat log on the host ($((SECONDS - kill_start)) s after docker kill)"
else
  fail "no UNREACHABLE line for datanode2 in $heartbeat"
fi
if within 10 page_shows datanode2 UNREACHABLE && page_shows datanode1 SERVING && page_shows datanode3 SERVING; then
  ok "the status page on port 9500 shows datanode2 UNREACHABLE and the others SERVING"
else
  fail "the status page on port 9500: $(http_get 9500 / | grep -o '<tr class[^\n]*' | head -5)"
fi
errors=0
for i in $(seq 1 20); do
  out=$("${client[@]}" send --count 1 --log data/client/host.log 2>&1) || errors=$((errors + 1))
  grep -q "stored on datanode2" <<<"$out" && errors=$((errors + 1))
done
[ $errors -eq 0 ] && ok "20 Stores succeed while datanode2 is down" || fail "$errors of 20 Stores failed or went to datanode2"

lines=$(wc -l <"$heartbeat")
$DC start datanode2 >/dev/null 2>&1
if within 30 logged_after datanode2 SERVING "$lines" && within 10 status_is datanode2 SERVING; then
  ok "datanode2 SERVING again after restart"
else
  fail "datanode2 did not return to SERVING"
fi
missing=0
for id in $before_ids; do grep -q "\"id\":\"$id\"" data/datanode2/messages.jsonl || missing=$((missing + 1)); done
[ $missing -eq 0 ] && ok "every message stored before the kill is still in data/datanode2/messages.jsonl" || fail "$missing messages missing from datanode2's file"

target/x86_64-unknown-linux-gnu/release/client tls cert --dir certs --role datanode --name datanode4 --host localhost --host 127.0.0.1 >/dev/null
scripts/compose-extra.sh 4 >"$extra"
DC="$DC -f $extra"
mkdir -p data/datanode4
$DC up -d --no-recreate datanode4 >/dev/null 2>&1
if within 30 bash -c "[ \$(${client[*]} status | awk '\$3 == \"SERVING\"' | wc -l) -eq 4 ]"; then
  ok "a fourth datanode registered and is SERVING"
else
  fail "no fourth datanode SERVING: $("${client[@]}" status)"
fi
fourth=$("${client[@]}" status | awk 'NR > 1 && $1 !~ /^datanode[123]$/ {print $1}' | head -1)
got=0
for _ in $(seq 1 200); do
  "${client[@]}" send --count 1 --log data/client/host.log 2>/dev/null | grep -q "stored on $fourth\." && { got=1; break; }
done
[ $got -eq 1 ] && ok "the fourth datanode ($fourth) gets traffic" || fail "the fourth datanode got no traffic"

stored=0
for port in 9601 9602 9603; do
  n=$(http_get "$port" /metrics | awk '$1 == "registro_stored_total" {print $2}')
  stored=$((stored + ${n:-0}))
done
routed=$(http_get 9500 /metrics | awk '/^registro_routed_total\{datanode="datanode[123]"\}/ {s += $2} END {print s + 0}')
# datanode2's counter restarted with it; what it routed since then is in both.
if [ "$stored" -gt 0 ] && http_get 9500 /metrics | grep -q '^grpc_server_handled_total{grpc_type="unary",grpc_service="registro.v1.Store",grpc_method="Store",grpc_code="OK"} [1-9]'; then
  ok "metrics on 9500 and 9601-9603: $stored messages stored by datanode1-3 since they started, $routed routed to them by the headnode"
else
  fail "metrics on 9500/9601-9603: stored=$stored routed=$routed"
fi

make down >/dev/null 2>&1
left=$(docker ps -q --filter label=com.docker.compose.project=registro | wc -l)
[ "$left" -eq 0 ] && ok "make down leaves no container running" || fail "$left containers still running"

echo "compose: $passed passed, $failed failed"
[ $failed -eq 0 ]
