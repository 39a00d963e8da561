#!/usr/bin/env bash
# The ECV monitor's answer time under wrk -c32 on /ecv, with the
# application idle and then busy (a second wrk -c32 on / at the same time).
#   bench/ecv.sh [-d SECONDS]
# Installs wrk from Debian when it is missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=5
while getopts d: o; do case $o in d) dur=$OPTARG ;; *) exit 2 ;; esac; done
command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
mkdir -p bench/out
go build -o bench/out/example ./example
bench/out/example -addr 127.0.0.1:5200 -monitor 127.0.0.1:5201 -workers 2 2>/dev/null &
pid=$!
stop() { kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; }
trap stop EXIT
trap 'stop; exit 1' INT TERM
for _ in $(seq 100); do curl -fs http://127.0.0.1:5201/ecv >/dev/null && break; sleep 0.05; done

summary() { awk '/Latency/ {printf "latency avg %s, stdev %s, max %s; ", $2, $3, $4} /Requests\/sec/ {printf "%s req/s", $2} /Non-2xx|Socket errors/ {printf "; %s", $0}'; echo; }
echo "machine: $(nproc) cores, $(uname -r); wrk -t1 -c32 -d${dur}s on /ecv"
printf 'ECV, application idle: '
wrk -t1 -c32 -d"${dur}s" http://127.0.0.1:5201/ecv | summary
wrk -t1 -c32 -d"$((dur + 2))s" http://127.0.0.1:5200/ >/dev/null &
load=$!
sleep 1
printf 'ECV, application busy: '
wrk -t1 -c32 -d"${dur}s" http://127.0.0.1:5201/ecv | summary
wait $load
