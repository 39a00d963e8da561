#!/usr/bin/env bash
# flock against the real performance limit of this machine.
#
#   bench/limit.sh [-r ROUNDS] [-d SAT_SECONDS] [-f FIXED_SECONDS] [-s SLICE_SECONDS]
#                  [-c CONNECTIONS] [-p FRACTION] [-m "MODES"] [-a]
#
# The limit of a 2-worker prefork is two bare processes (bench/bare), each
# GOMAXPROCS=1 with its own SO_REUSEPORT listener on the same port and no
# master at all: what flock would be if its machinery cost nothing. The
# contender is flock with 2 workers (example, or example/echo; flock gives
# each worker GOMAXPROCS = CPUs / workers = 1 on this 2-core machine).
#
# Modes (default all four): http-keepalive, http-newconn (a new connection
# per request, "Connection: close"), echo-keepalive, echo-newconn (a new
# connection per message). Two load levels:
#
#   sat    saturating: wrk -t1 -cC (HTTP) or echoload -cC (echo)
#   fixed  a fixed offered rate R = FRACTION (default 0.5) of the bare
#          limit's saturated throughput, measured once at the start of the
#          mode: echoload -cC -rate R (wrk has no rate option; echoload
#          -proto http is a minimal HTTP/1.1 client with one)
#
# In each round (default 7) both servers are started, on two ports, and
# the load alternates between them in slices of -s seconds (default 1),
# bare first in odd slices and flock first in even ones, until each has had
# -d seconds of saturating load (default 5) and -f seconds at the fixed rate
# (default 20). Only one server is loaded at a time. Interleaving matters:
# this VM's speed drifts (a fixed CPU-bound loop took 167 to 218 ms in
# consecutive runs), and alternating whole runs of 15 s (the first version
# of this script) gave per-round CPU ratios from 0.76 to 1.36. What drifts
# slower than a slice cancels; what is faster only averages out, hence the
# long fixed-rate level and the mean ± standard error beside the median.
#
# Measured per server, over its own slices: requests (or messages) per
# second, and CPU time per request: utime + stime (/proc/PID/stat fields 14
# and 15) summed over every process of the server (the two bare processes;
# flock's master and all its descendants) before and after each slice,
# divided by the requests it served. At saturation both servers use what
# CPU the client leaves them, so CPU per request there mostly mirrors
# throughput; the fixed rate is the measure to read. Prints every round,
# then per mode and level the median and range of the ratio flock / bare,
# and its mean ± standard error over the rounds.
#
# -a is the A/A test of the method itself: the contender is a second bare
# pair instead of flock, so every ratio should be 1 and its spread is the
# noise floor of this machine.
#
# Loopback only. Every process started here is killed on exit, Ctrl-C
# included (servers by process group, load generators by pid). Needs wrk
# (installed from Debian when missing) and ss.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh # run, tree, tree_ticks, stats

rounds=7 sat=5 fixed=20 slice=1 conns=32 frac=0.5 aa=
modes="http-keepalive http-newconn echo-keepalive echo-newconn"
while getopts r:d:f:s:c:p:m:a o; do
  case $o in
    r) rounds=$OPTARG ;; d) sat=$OPTARG ;; f) fixed=$OPTARG ;; s) slice=$OPTARG ;;
    c) conns=$OPTARG ;; p) frac=$OPTARG ;; m) modes=$OPTARG ;; a) aa=1 ;;
    *) echo "usage: $0 [-r rounds] [-d saturating seconds] [-f fixed-rate seconds] [-s slice seconds] [-c connections] [-p fraction] [-m modes] [-a]" >&2; exit 2 ;;
  esac
done
for m in $modes; do
  case $m in http-keepalive | http-newconn | echo-keepalive | echo-newconn) ;; *) echo "unknown mode $m" >&2; exit 2 ;; esac
done

command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null

out=bench/out
res=$out/limit
mkdir -p "$res"
go build -o "$out/example" ./example
go build -o "$out/echo" ./example/echo
go build -o "$out/bare" ./bench/bare
go build -o "$out/echoload" ./bench/echoload
hz=$(getconf CLK_TCK)

# Processes we started: servers are process-group leaders (setsid), so a
# group kill reaches flock's workers too; load generators are single pids.
# groups holds every server group; g_bare and g_flock each server's.
groups=() g_bare=() g_flock=() loads=()
stop_servers() {
  local g
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${groups[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
    wait "$g" 2>/dev/null || true
  done
  groups=() g_bare=() g_flock=()
}
cleanup() {
  local p
  for p in "${loads[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  loads=()
  stop_servers
}
trap cleanup EXIT
trap 'echo interrupted >&2; exit 130' INT TERM

# ticks bare|flock: tree_ticks over the server's processes (its group
# leaders and all their descendants).
ticks() {
  local -n leaders=g_$1
  tree_ticks "${leaders[@]}"
}

port=5300
# free_port: the next port P such that P and P+1 (flock's monitor) are free.
free_port() {
  while :; do
    port=$((port + 2))
    if [ -z "$(ss -Hltn "( sport = :$port or sport = :$((port + 1)) )")" ]; then return; fi
  done
}

# serve bare|flock PROTO: start the server on a fresh port (kept in
# $port_bare or $port_flock) and wait until it is ready (bare: both sockets
# listen; flock: the monitor shows two ready workers). With -a, "flock" is
# a second bare pair.
serve() {
  free_port
  local addr=127.0.0.1:$port log=$res/$1-$2.log kind=$1
  printf -v "port_$1" %s "$port"
  [ -n "$aa" ] && kind=bare
  case $kind in
    bare)
      # Both in one session, as flock's master and workers are: with
      # kernel.sched_autogroup_enabled=1 the scheduler shares CPU fairly
      # between sessions, and two sessions against flock's one would get
      # the bare pair more of the CPU the load generator leaves.
      local -n g=g_$1
      setsid bash -c 'GOMAXPROCS=1 "$0" -mode "$1" -addr "$2" & GOMAXPROCS=1 "$0" -mode "$1" -addr "$2" & wait' \
        "$out/bare" "$2" "$addr" 2>>"$log" &
      groups+=("$!") g+=("$!")
      ;;
    flock)
      local bin=$out/example
      [ "$2" = echo ] && bin=$out/echo
      setsid "$bin" -workers 2 -addr "$addr" 2>"$log" &
      groups+=("$!") g_flock+=("$!")
      ;;
  esac
  for _ in $(seq 200); do
    case $kind in
      bare) [ "$(ss -Hltn "sport = :$port" | wc -l)" = 2 ] && return ;;
      flock) [ "$(curl -fs "http://127.0.0.1:$((port + 1))/" 2>/dev/null | grep -c '"state": "ready"')" = 2 ] && return ;;
    esac
    sleep 0.05
  done
  echo "$1 $2 did not start (see $log)" >&2
  exit 1
}

# load PORT PROTO KIND LEVEL SECONDS [RATE]: one load run; sets $n
# (requests answered) and $f (failures). LEVEL is sat (wrk for HTTP,
# echoload for echo) or fixed (echoload at RATE).
load() {
  local port=$1 proto=$2 kind=$3 level=$4 secs=$5 rate=${6:-0}
  if [ "$proto" = http ] && [ "$level" = sat ]; then
    local h=()
    [ "$kind" = newconn ] && h=(-H "Connection: close")
    run wrk -t1 -c"$conns" -d"${secs}s" "${h[@]}" "http://127.0.0.1:$port/"
    read -r n f < <(awk '/requests in/ {n = $1} /Socket errors/ {gsub(/,/, ""); e = $4 + $6 + $8 + $10}
      /Non-2xx/ {e += $NF} END {print n + 0, e + 0}' "$res/load.out")
  else
    run "$out/echoload" -proto "$proto" -mode "$kind" -addr "127.0.0.1:$port" -c "$conns" -d "${secs}s" -rate "$rate"
    read -r n f < <(awk '/^messages/ {n = $2; f = $4} END {print n + 0, f + 0}' "$res/load.out")
  fi
  if [ "$n" = 0 ]; then
    echo "no requests answered; the load generator said:" >&2
    cat "$res/load.out" >&2
    exit 1
  fi
}

# slice bare|flock PROTO KIND LEVEL SECONDS [RATE]: a measured load run on
# that server; adds to its totals: A[s.n] requests, A[s.f] failures,
# A[s.t] CPU ticks, A[s.ns] nanoseconds of load.
declare -A A
slice() {
  local s=$1 before p0 t0 t1 p=port_$1
  shift
  ticks "$s"
  before=$sum p0=$procs
  t0=$(date +%s%N)
  load "${!p}" "$@"
  t1=$(date +%s%N)
  ticks "$s"
  [ "$p0" = "$procs" ] || echo "    warning: $s's processes changed during a slice ($p0-> $procs)" >&2
  A[$s.n]=$((${A[$s.n]:-0} + n)) A[$s.f]=$((${A[$s.f]:-0} + f))
  A[$s.t]=$((${A[$s.t]:-0} + sum - before)) A[$s.ns]=$((${A[$s.ns]:-0} + t1 - t0))
}

# result bare|flock: "req/s cpu-µs-per-request failures cores-used" from the totals.
result() {
  awk -v n="${A[$1.n]}" -v f="${A[$1.f]}" -v t="${A[$1.t]}" -v ns="${A[$1.ns]}" -v hz="$hz" \
    'BEGIN {printf "%.0f %.3f %d %.2f\n", n / ns * 1e9, t * 1e6 / hz / n, f, t / hz / ns * 1e9}'
}

echo "machine: $(nproc) cores, $(uname -r), $(go version | cut -d' ' -f3); $(uptime | sed 's/.*load/load/')"
echo "rounds $rounds; per server and round: saturating ${sat}s (wrk -t1 -c$conns for HTTP, echoload -c$conns for echo)," \
  "fixed rate ${fixed}s (echoload -c$conns at $frac × the bare limit's saturated throughput), in alternating ${slice}s slices"
echo "bare = 2 × bench/bare (GOMAXPROCS=1, SO_REUSEPORT, no master); flock = example or example/echo, -workers 2"
[ -z "$aa" ] || echo "A/A TEST (-a): \"flock\" below is a second bare pair"
echo "cpu = utime+stime of every server process per request, in µs; cores = CPU seconds per second used by the server"
for mode in $modes; do
  proto=${mode%%-*} kind=${mode#*-}
  unit=req
  [ "$proto" = echo ] && unit=msg
  echo
  # The fixed rate: the bare limit's saturated throughput, measured once.
  serve bare "$proto"
  load "$port_bare" "$proto" "$kind" sat 1 # warm-up
  A=()
  slice bare "$proto" "$kind" sat "$sat"
  read -r cal _ < <(result bare)
  stop_servers
  rate=$(awk -v c="$cal" -v f="$frac" 'BEGIN {printf "%.0f", c * f}')
  echo "$mode: bare limit saturated at $cal $unit/s; fixed rate $rate $unit/s"
  for level in sat fixed; do : >"$res/$mode.$level.rps"; : >"$res/$mode.$level.cpu"; done
  for r in $(seq "$rounds"); do
    serve bare "$proto"
    serve flock "$proto"
    for s in bare flock; do
      p=port_$s
      load "${!p}" "$proto" "$kind" sat 1 # warm-up
    done
    for level in sat fixed; do
      A=()
      secs=$sat lrate=0
      [ "$level" = fixed ] && secs=$fixed lrate=$rate
      k=0 done_s=0
      while awk -v d="$done_s" -v t="$secs" 'BEGIN {exit !(d < t - 1e-9)}'; do
        k=$((k + 1))
        len=$(awk -v d="$done_s" -v t="$secs" -v s="$slice" 'BEGIN {print (t - d < s ? t - d : s)}')
        order="bare flock"
        [ $((k % 2)) = 0 ] && order="flock bare"
        for s in $order; do slice "$s" "$proto" "$kind" "$level" "$len" "$lrate"; done
        done_s=$(awk -v d="$done_s" -v l="$len" 'BEGIN {print d + l}')
      done
      read -r br bc bf bu < <(result bare)
      read -r fr fc ff fu < <(result flock)
      rr=$(awk -v a="$fr" -v b="$br" 'BEGIN {printf "%.3f", a / b}')
      cr=$(awk -v a="$fc" -v b="$bc" 'BEGIN {printf "%.3f", a / b}')
      echo "$rr" >>"$res/$mode.$level.rps"
      echo "$cr" >>"$res/$mode.$level.cpu"
      fails=
      [ "$bf$ff" = 00 ] || fails="   FAILURES bare $bf flock $ff"
      printf '%-14s round %d %-5s  bare %7d %s/s %7.3f µs %4.2f cores | flock %7d %s/s %7.3f µs %4.2f cores | flock/bare: %s/s %s  cpu/%s %s%s\n' \
        "$mode" "$r" "$level" "$br" "$unit" "$bc" "$bu" "$fr" "$unit" "$fc" "$fu" "$unit" "$rr" "$unit" "$cr" "$fails"
    done
    stop_servers
  done
done

echo
echo "flock / bare over the rounds: median (range); mean ± standard error"
printf '%-14s %-6s %-42s %s\n' mode level "throughput" "cpu per request"
for mode in $modes; do
  for level in fixed sat; do
    printf '%-14s %-6s %-42s %s\n' "$mode" "$level" "$(stats "$res/$mode.$level.rps")" "$(stats "$res/$mode.$level.cpu")"
  done
done
