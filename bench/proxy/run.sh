#!/usr/bin/env bash
# The overhead of the proxy hop of `flock -proxy` (package proxy).
#
#   bench/proxy/run.sh [-r ROUNDS] [-d SAT_SECONDS] [-f FIXED_SECONDS] [-s SLICE_SECONDS]
#                      [-c CONNECTIONS] [-p FRACTION] [-m "MODES"] [-a] [-k]
#
# One `flock -proxy` runs the proxy config this script writes: one binding
# on 127.0.0.1 with 2 proxy workers, and version v1 (defaultVersion) with 2
# workers of bench/proxy/backend, a minimal standard-library HTTP server
# (GOMAXPROCS=1 each, from the config's "env"; flock gives the proxy
# workers GOMAXPROCS = CPUs / workers = 1 on this 2-core machine) that
# serves the socket flock hands it (fd 3) and answers "hello\n". The same
# 2 backend processes are loaded two ways:
#
#   direct   on v1's own port (from `proxy info`): the backends alone
#   proxied  on the binding's port: through the 2 proxy workers (a
#            ReverseProxy with keep-alive connections to the backends)
#
# Modes (default both): keepalive (wrk -t1 -cC) and newconn (the same
# with -H "Connection: close": a new client connection per request; the
# proxy's connections to the backends stay pooled). Two load levels:
#
#   sat    saturating: wrk -t1 -cC
#   fixed  a fixed offered rate R = FRACTION (default 0.5) of the PROXIED
#          path's saturated throughput (the lower of the two, so that both
#          paths can serve R), measured once per mode at the start:
#          bench/echoload -proto http -cC -rate R (wrk has no rate option)
#
# In each round (default 7) flock is started afresh, and the load
# alternates between the two ports in slices of -s seconds (default 1),
# direct first in odd slices and proxied first in even ones, until each
# path has had -d seconds of saturating load (default 5) and -f seconds at
# the fixed rate (default 10), for each mode. Only one path is loaded at a
# time. As in bench/limit.sh: this VM's speed drifts between minutes, and
# what drifts slower than a slice cancels out of the ratios.
#
# Measured per path, over its own slices: requests per second (from wrk's
# or echoload's output), and CPU time per request: utime + stime
# (/proc/PID/stat fields 14 and 15) summed over every process of the flock
# tree (master, proxy workers, backends) before and after each slice,
# divided by the requests served. In direct slices the proxy workers are
# idle, so the whole tree is the right sum for both paths. At saturation
# CPU per request mostly mirrors throughput (both paths use what CPU the
# client leaves); the fixed rate is the measure of CPU cost to read. The
# client's own CPU is not counted. Prints every round, then per mode and
# level the median and range of the ratio proxied / direct, and its mean ±
# standard error over the rounds.
#
# -a is the A/A test of the method: "proxied" slices load v1's port too,
# so every ratio should be 1 and its spread is this machine's noise floor.
# -k keeps the temporary folder (binaries, config, logs, raw figures).
#
# Loopback only. Every process started here is killed on exit, Ctrl-C
# included: flock by its process group (the master and its proxy workers),
# then any process of its tree still alive by pid (the backends have
# process groups of their own), the load generators by pid. Needs wrk, ss,
# curl and jq.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh # run, tree, tree_ticks, stats

rounds=7 sat=5 fixed=10 slice=1 conns=32 frac=0.5 aa= keep=
modes="keepalive newconn"
while getopts r:d:f:s:c:p:m:ak o; do
  case $o in
    r) rounds=$OPTARG ;; d) sat=$OPTARG ;; f) fixed=$OPTARG ;; s) slice=$OPTARG ;;
    c) conns=$OPTARG ;; p) frac=$OPTARG ;; m) modes=$OPTARG ;; a) aa=1 ;; k) keep=1 ;;
    *) echo "usage: $0 [-r rounds] [-d saturating seconds] [-f fixed-rate seconds] [-s slice seconds] [-c connections] [-p fraction] [-m modes] [-a] [-k]" >&2; exit 2 ;;
  esac
done
for m in $modes; do
  case $m in keepalive | newconn) ;; *) echo "unknown mode $m (keepalive, newconn)" >&2; exit 2 ;; esac
done
for c in wrk ss curl jq; do
  command -v "$c" >/dev/null || { echo "$0: needs $c" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/flock-proxy-bench.XXXXXX)
res=$tmp/res
mkdir -p "$res" "$tmp/versions/v1"
go build -o "$tmp/flock" ./cmd/flock
go build -o "$tmp/versions/v1/backend" ./bench/proxy/backend
go build -o "$tmp/echoload" ./bench/echoload
hz=$(getconf CLK_TCK)
key=bench-$$-$RANDOM

# The processes we started: $master is flock's master, a process-group
# leader (setsid), and $loads the load generator running, if any.
master= loads=()
stop_flock() {
  [ -n "$master" ] || return 0
  local p pids
  pids=$(tree "$master")
  kill -TERM -- "-$master" 2>/dev/null || true # a graceful stop: it stops the backends too
  for _ in $(seq 100); do
    kill -0 -- "-$master" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$master" 2>/dev/null || true
  wait "$master" 2>/dev/null || true
  # The backends have process groups of their own (flock starts foreign
  # programs so): any left, and still ours (its binary is in $tmp), dies.
  for p in $pids; do
    case $(readlink "/proc/$p/exe" 2>/dev/null) in "$tmp"/*) kill -KILL "$p" 2>/dev/null || true ;; esac
  done
  master=
}
cleanup() {
  local p
  for p in "${loads[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  loads=()
  stop_flock
  if [ -n "$keep" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'echo interrupted >&2; exit 130' INT TERM

# ticks: tree_ticks over flock's tree.
ticks() { tree_ticks "$master"; }

# free_port FROM: sets $port to the first port from FROM on that nothing
# listens on.
free_port() {
  port=$1
  while [ -n "$(ss -Hltn "sport = :$port")" ]; do port=$((port + 1)); done
}
free_port 25100
bind_port=$port
free_port $((bind_port + 1))
cmd_port=$port
vlo=$((cmd_port + 100)) # flock picks a free port in the range itself
cat >"$tmp/proxy.json" <<EOF
{
  "versionPath": "versions",
  "defaultVersion": "v1",
  "defaultWorkerCount": 2,
  "workerFilename": "backend",
  "bindings": [{"host": "127.0.0.1", "port": $bind_port, "workerCount": 2}],
  "versionPorts": "$vlo-$((vlo + 99))",
  "env": {"GOMAXPROCS": "1"}
}
EOF

# info: `proxy info` on the command surface.
info() {
  curl -fsS -m 5 -X POST -H "Authorization: Bearer $key" "http://127.0.0.1:$cmd_port/cli?cmd=proxy%20info"
}

# start_flock: start flock -proxy and wait until the 2 proxy workers and
# v1's 2 workers are ready and both ports answer; sets $port_direct (v1's
# port) and $port_proxied (the binding's).
start_flock() {
  local log=$res/flock.log i
  setsid "$tmp/flock" -monitor off -access-key "$key" -command-addr "127.0.0.1:$cmd_port" \
    -shutdown-timeout 5s -proxy "$tmp/proxy.json" >>"$log" 2>&1 &
  master=$!
  for _ in $(seq 200); do
    if ! kill -0 "$master" 2>/dev/null; then break; fi
    if i=$(info 2>/dev/null) && jq -e '([.proxyWorkers[] | select(.state == "ready")] | length) == 2 and
      ([.versions[] | select(.version == "v1" and .state == "running" and .ready == 2)] | length) == 1' <<<"$i" >/dev/null; then
      port_direct=$(jq -r '.versions[] | select(.version == "v1") | .port' <<<"$i")
      port_proxied=$bind_port
      [ -z "$aa" ] || port_proxied=$port_direct
      if [ "$(curl -fsS -m 2 "http://127.0.0.1:$port_direct/" 2>/dev/null)" = hello ] &&
        [ "$(curl -fsS -m 2 "http://127.0.0.1:$bind_port/" 2>/dev/null)" = hello ]; then
        return
      fi
    fi
    sleep 0.1
  done
  echo "flock -proxy did not start serving in 20 s; its log:" >&2
  tail -30 "$log" >&2
  exit 1
}

# load PORT MODE LEVEL SECONDS [RATE]: one load run; sets $n (requests
# answered) and $f (failures: socket errors, non-2xx answers).
load() {
  local port=$1 mode=$2 level=$3 secs=$4 rate=${5:-0}
  if [ "$level" = sat ]; then
    local h=()
    [ "$mode" = newconn ] && h=(-H "Connection: close")
    run wrk -t1 -c"$conns" -d"${secs}s" "${h[@]}" "http://127.0.0.1:$port/"
    read -r n f < <(awk '/requests in/ {n = $1} /Socket errors/ {gsub(/,/, ""); e = $4 + $6 + $8 + $10}
      /Non-2xx/ {e += $NF} END {print n + 0, e + 0}' "$res/load.out")
  else
    run "$tmp/echoload" -proto http -mode "$mode" -addr "127.0.0.1:$port" -c "$conns" -d "${secs}s" -rate "$rate"
    read -r n f < <(awk '/^messages/ {n = $2; f = $4} END {print n + 0, f + 0}' "$res/load.out")
  fi
  if [ "$n" = 0 ]; then
    echo "no requests answered on port $port; the load generator said:" >&2
    cat "$res/load.out" >&2
    exit 1
  fi
}

# slice direct|proxied MODE LEVEL SECONDS [RATE]: a measured load run on
# that path; adds to its totals: A[s.n] requests, A[s.f] failures, A[s.t]
# CPU ticks of flock's tree, A[s.ns] nanoseconds of load.
declare -A A
slice() {
  local s=$1 before p0 t0 t1 p=port_$1
  shift
  ticks
  before=$sum p0=$procs
  t0=$(date +%s%N)
  load "${!p}" "$@"
  t1=$(date +%s%N)
  ticks
  [ "$p0" = "$procs" ] || echo "    warning: flock's processes changed during a slice ($p0-> $procs)" >&2
  A[$s.n]=$((${A[$s.n]:-0} + n)) A[$s.f]=$((${A[$s.f]:-0} + f))
  A[$s.t]=$((${A[$s.t]:-0} + sum - before)) A[$s.ns]=$((${A[$s.ns]:-0} + t1 - t0))
}

# alternate MODE LEVEL SECONDS [RATE]: slices of both paths, alternating,
# until each has had SECONDS; the totals start from zero.
alternate() {
  local mode=$1 level=$2 secs=$3 rate=${4:-0} k=0 done_s=0 len order s
  A=()
  while awk -v d="$done_s" -v t="$secs" 'BEGIN {exit !(d < t - 1e-9)}'; do
    k=$((k + 1))
    len=$(awk -v d="$done_s" -v t="$secs" -v s="$slice" 'BEGIN {print (t - d < s ? t - d : s)}')
    order="direct proxied"
    [ $((k % 2)) = 0 ] && order="proxied direct"
    for s in $order; do slice "$s" "$mode" "$level" "$len" "$rate"; done
    done_s=$(awk -v d="$done_s" -v l="$len" 'BEGIN {print d + l}')
  done
}

# result direct|proxied: "req/s cpu-µs-per-request failures cores-used".
result() {
  awk -v n="${A[$1.n]}" -v f="${A[$1.f]}" -v t="${A[$1.t]}" -v ns="${A[$1.ns]}" -v hz="$hz" \
    'BEGIN {printf "%.0f %.3f %d %.2f\n", n / ns * 1e9, t * 1e6 / hz / n, f, t / hz / ns * 1e9}'
}

warmup() {
  local mode
  for mode in $modes; do
    load "$port_direct" "$mode" sat 1
    load "$port_proxied" "$mode" sat 1
  done
}

start=$(date +%s)
echo "machine: $(nproc) cores, $(uname -r), $(go version | cut -d' ' -f3); $(uptime | sed 's/.*load/load/')"
echo "rounds $rounds; per path, mode and round: saturating ${sat}s (wrk -t1 -c$conns), fixed rate ${fixed}s" \
  "(echoload -proto http -c$conns at $frac × the proxied path's saturated throughput), in alternating ${slice}s slices"
echo "flock -proxy: 2 proxy workers on 127.0.0.1:$bind_port; v1 = 2 × bench/proxy/backend (GOMAXPROCS=1) on its own port"
echo "direct = load on v1's port; proxied = load on the binding, through the proxy workers to the same backends"
[ -z "$aa" ] || echo "A/A TEST (-a): \"proxied\" below loads v1's port too"
echo "cpu = utime+stime of flock's whole tree (master, proxy workers, backends) per request, in µs; cores = CPU seconds per second"

# The fixed rates: the proxied path's saturated throughput, once per mode.
declare -A rate
start_flock
echo "v1 on 127.0.0.1:$port_direct"
warmup
for mode in $modes; do
  alternate "$mode" sat 3
  read -r dr _ < <(result direct)
  read -r pr _ < <(result proxied)
  rate[$mode]=$(awk -v c="$pr" -v f="$frac" 'BEGIN {printf "%.0f", c * f}')
  echo "$mode: saturated at $dr req/s direct, $pr req/s proxied; fixed rate ${rate[$mode]} req/s"
  for level in sat fixed; do : >"$res/$mode.$level.rps"; : >"$res/$mode.$level.cpu"; done
done
stop_flock

for r in $(seq "$rounds"); do
  echo
  start_flock
  warmup
  for mode in $modes; do
    for level in sat fixed; do
      if [ "$level" = sat ]; then alternate "$mode" sat "$sat"; else alternate "$mode" fixed "$fixed" "${rate[$mode]}"; fi
      read -r dr dc df du < <(result direct)
      read -r pr pc pf pu < <(result proxied)
      rr=$(awk -v a="$pr" -v b="$dr" 'BEGIN {printf "%.3f", a / b}')
      cr=$(awk -v a="$pc" -v b="$dc" 'BEGIN {printf "%.3f", a / b}')
      echo "$rr" >>"$res/$mode.$level.rps"
      echo "$cr" >>"$res/$mode.$level.cpu"
      fails=
      [ "$df$pf" = 00 ] || fails="   FAILURES direct $df proxied $pf"
      printf '%-9s round %d %-5s  direct %6d req/s %7.2f µs %4.2f cores | proxied %6d req/s %7.2f µs %4.2f cores | proxied/direct: req/s %s  cpu/req %s%s\n' \
        "$mode" "$r" "$level" "$dr" "$dc" "$du" "$pr" "$pc" "$pu" "$rr" "$cr" "$fails"
    done
  done
  stop_flock
done

echo
echo "proxied / direct over the rounds: median (range); mean ± standard error"
printf '%-9s %-6s %-42s %s\n' mode level "throughput" "cpu per request"
for mode in $modes; do
  for level in sat fixed; do
    printf '%-9s %-6s %-42s %s\n' "$mode" "$level" "$(stats "$res/$mode.$level.rps")" "$(stats "$res/$mode.$level.cpu")"
  done
done
echo "took $(($(date +%s) - start)) s"
