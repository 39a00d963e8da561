#!/usr/bin/env bash
# Throughput of the example (flock, N workers) against one plain net/http
# process serving the same route, on this machine, in alternating rounds.
#
#   bench/run.sh [-d SECONDS] [-r ROUNDS] [-w WORKERS] [-c CONNECTIONS]
#
# Modes: keep-alive, and a new connection per request (wrk with
# "Connection: close"). Prints each round and the median ratio flock/plain.
# Installs wrk from Debian when it is missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

dur=10 rounds=3 workers=2 conns=32
while getopts d:r:w:c: o; do
  case $o in
    d) dur=$OPTARG ;; r) rounds=$OPTARG ;; w) workers=$OPTARG ;; c) conns=$OPTARG ;;
    *) echo "usage: $0 [-d seconds] [-r rounds] [-w workers] [-c connections]" >&2; exit 2 ;;
  esac
done

if ! command -v wrk >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi

out=bench/out
mkdir -p "$out"
go build -o "$out/example" ./example
go build -o "$out/plain" ./bench/plain

pid=
cleanup() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; pid=; }
trap cleanup EXIT
trap 'cleanup; exit 1' INT TERM

# serve NAME PORT: start a server in the background and wait until it answers.
serve() {
  case $1 in
    plain) "$out/plain" -addr "127.0.0.1:$2" & ;;
    flock) "$out/example" -addr "127.0.0.1:$2" -workers "$workers" 2>/dev/null & ;;
  esac
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$2/" >/dev/null && return; sleep 0.05; done
  echo "$1 did not start" >&2; exit 1
}

# rps PORT [wrk args]: requests per second, after a 1 s warm-up. Socket
# errors and non-2xx answers are reported, not hidden.
rps() {
  local port=$1; shift
  wrk -t1 -c"$conns" -d1s "$@" "http://127.0.0.1:$port/" >/dev/null
  local r
  r=$(wrk -t1 -c"$conns" -d"${dur}s" "$@" "http://127.0.0.1:$port/")
  if grep -qE 'Socket errors|Non-2xx' <<<"$r"; then grep -E 'Socket errors|Non-2xx' <<<"$r" | sed 's/^/    /' >&2; fi
  awk '/Requests\/sec/ {print $2}' <<<"$r"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "machine: $(nproc) cores, $(uname -r), $(go version | cut -d' ' -f3); wrk -t1 -c$conns -d${dur}s; flock workers: $workers"
port=5100
for mode in keep-alive new-connection; do
  args=()
  [ "$mode" = new-connection ] && args=(-H "Connection: close")
  : >"$out/$mode.ratios"
  for r in $(seq "$rounds"); do
    port=$((port + 2))
    serve plain $port; p=$(rps $port "${args[@]}"); cleanup
    serve flock $port; f=$(rps $port "${args[@]}")
    # How the kernel's reuseport hash split the requests between workers
    # (the monitor's status page, on port + 1).
    sleep 1.2 # workers report their counts once a second
    split=$(curl -fs "http://127.0.0.1:$((port + 1))/" | awk -F'[:,]' '/"requests"/ {gsub(/ /, "", $2); printf "%s%s", sep, $2; sep="/"}')
    cleanup
    ratio=$(awk -v f="$f" -v p="$p" 'BEGIN {printf "%.3f", f/p}')
    echo "$ratio" >>"$out/$mode.ratios"
    printf '%-15s round %d: plain %8.0f req/s   flock %8.0f req/s   ratio %s   (per-worker requests %s)\n' "$mode" "$r" "$p" "$f" "$ratio" "$split"
  done
  printf '%-15s median ratio flock/plain: %s\n' "$mode" "$(median <"$out/$mode.ratios")"
done
