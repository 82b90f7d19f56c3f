#!/usr/bin/env bash
# Prints the HAProxy configuration the benchmarks compare against (make bench's scenario d,
# flush-cost.sh's FRONT=haproxy): gRPC over HTTP/2 on 127.0.0.1:PORT to the datanodes, balanced
# at random, upstream connections shared between streams (`http-reuse always`).
#
# Usage: scripts/haproxy-config.sh PORT MAXCONN DATANODE_ADDRESS... > haproxy.cfg
set -euo pipefail
(($# >= 3)) || { echo "usage: $0 PORT MAXCONN DATANODE_ADDRESS..." >&2; exit 2; }
port=$1 maxconn=$2
shift 2
cat <<CONF
# Written by scripts/haproxy-config.sh: gRPC to the datanodes over HTTP/2, balanced at random.
global
    maxconn $maxconn
    log stderr format raw local0 warning
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend grpc
    bind 127.0.0.1:$port proto h2
    default_backend datanodes
backend datanodes
    balance random
    http-reuse always
CONF
n=0
for address in "$@"; do
  n=$((n + 1))
  echo "    server datanode$n $address proto h2"
done
