#!/usr/bin/env bash
# flock against the real performance limit of this machine.
#
#   bench/limit.sh [-r ROUNDS] [-d SAT_SECONDS] [-f FIXED_SECONDS] [-c CONNECTIONS]
#                  [-p FRACTION] [-m "MODES"]
#
# The limit of a 2-worker prefork is two bare processes (bench/bare), each
# GOMAXPROCS=1 with its own SO_REUSEPORT listener on the same port and no
# master at all: what flock would be if its machinery cost nothing. The
# contender is flock with 2 workers (example, or example/echo; flock gives
# each worker GOMAXPROCS = CPUs / workers = 1 on this 2-core machine).
#
# Modes (default all four): http-keepalive, http-newconn (a new connection
# per request, "Connection: close"), echo-keepalive, echo-newconn (a new
# connection per message). In each mode, rounds (default 7) alternate the
# two servers (bare first in odd rounds, flock first in even ones), same
# port and same load. Each server, once started, gets two measured runs:
#
#   saturating  wrk -t1 -cC -dD (HTTP) or echoload -cC -dD (echo)
#   fixed rate  echoload -cC -dF -rate R, R = FRACTION (default 0.5) of the
#               bare limit's saturated throughput, measured once at the
#               start of the mode (wrk has no rate option; echoload -proto
#               http is a minimal HTTP/1.1 client with a rate)
#
# and for each run: requests (or messages) per second, and CPU time per
# request: utime + stime (/proc/PID/stat fields 14 and 15) summed over every
# process of the server (the two bare processes; flock's master and all its
# descendants) before and after the run, divided by the requests served. At
# saturation both servers use whatever CPU the client leaves them, so CPU
# per request there mostly mirrors throughput; the fixed rate is the
# measure to read. Prints every round, then per mode and level the median
# and range of the ratio flock / bare for both metrics.
#
# Loopback only. Every process started here is killed on exit, Ctrl-C
# included (servers by process group, load generators by pid). Needs wrk
# (installed from Debian when missing) and ss.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=7 sat=5 fixed=10 conns=32 frac=0.5
modes="http-keepalive http-newconn echo-keepalive echo-newconn"
while getopts r:d:f:c:p:m: o; do
  case $o in
    r) rounds=$OPTARG ;; d) sat=$OPTARG ;; f) fixed=$OPTARG ;; c) conns=$OPTARG ;;
    p) frac=$OPTARG ;; m) modes=$OPTARG ;;
    *) echo "usage: $0 [-r rounds] [-d saturating seconds] [-f fixed-rate seconds] [-c connections] [-p fraction] [-m modes]" >&2; exit 2 ;;
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
groups=() loads=()
stop_servers() {
  local g
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${groups[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
    wait "$g" 2>/dev/null || true
  done
  groups=()
}
cleanup() {
  local p
  for p in "${loads[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  loads=()
  stop_servers
}
trap cleanup EXIT
trap 'echo interrupted >&2; exit 130' INT TERM

# run CMD...: run a load generator in the background, its output in
# $res/load.out, and wait for it (in this shell, not a subshell, so that a
# signal reaches the trap at once).
run() {
  "$@" >"$res/load.out" &
  loads=("$!")
  wait "$!" || true
  loads=()
}

# tree PID: the pid and all its descendants.
tree() {
  local c
  echo "$1"
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$c"; done
}

# ticks: sets $sum to utime + stime in clock ticks, summed over the
# server's processes (every started group leader and its descendants), and
# $procs to the pids counted, so that a process appearing or vanishing
# during a run (whose ticks would be missed) is noticed.
ticks() {
  local p s a
  sum=0
  procs=$(for p in "${groups[@]}"; do tree "$p"; done | sort -n | tr '\n' ' ')
  for p in $procs; do
    s=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    s=${s##*) } # fields from 3 (state) on: the name may hold spaces
    read -ra a <<<"$s"
    sum=$((sum + a[11] + a[12])) # fields 14 (utime) and 15 (stime)
  done
}

port=5300
# free_port: the next port P such that P and P+1 (flock's monitor) are free.
free_port() {
  while :; do
    port=$((port + 2))
    if [ -z "$(ss -Hltn "( sport = :$port or sport = :$((port + 1)) )")" ]; then return; fi
  done
}

# serve bare|flock PROTO: start the server on a fresh port and wait until
# it is ready (bare: both sockets listen; flock: the monitor shows two
# ready workers).
serve() {
  free_port
  local addr=127.0.0.1:$port log=$res/$1-$2.log
  case $1 in
    bare)
      GOMAXPROCS=1 setsid "$out/bare" -mode "$2" -addr "$addr" 2>>"$log" &
      groups+=("$!")
      GOMAXPROCS=1 setsid "$out/bare" -mode "$2" -addr "$addr" 2>>"$log" &
      groups+=("$!")
      ;;
    flock)
      local bin=$out/example
      [ "$2" = echo ] && bin=$out/echo
      setsid "$bin" -workers 2 -addr "$addr" 2>"$log" &
      groups+=("$!")
      ;;
  esac
  for _ in $(seq 200); do
    case $1 in
      bare) [ "$(ss -Hltn "sport = :$port" | wc -l)" = 2 ] && return ;;
      flock) [ "$(curl -fs "http://127.0.0.1:$((port + 1))/" 2>/dev/null | grep -c '"state": "ready"')" = 2 ] && return ;;
    esac
    sleep 0.05
  done
  echo "$1 $2 did not start (see $log)" >&2
  exit 1
}

# load PROTO KIND LEVEL SECONDS [RATE]: one load run against $port; sets
# $n (requests answered) and $f (failures). LEVEL is sat (wrk for HTTP,
# echoload for echo) or fixed (echoload at RATE).
load() {
  local proto=$1 kind=$2 level=$3 secs=$4 rate=${5:-0}
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

# measure PROTO KIND LEVEL SECONDS [RATE]: a measured load run; sets $m to
# "req/s cpu-µs-per-request failures cores-used".
measure() {
  local before p0 t0 t1
  ticks
  before=$sum p0=$procs
  t0=$(date +%s.%N)
  load "$@"
  t1=$(date +%s.%N)
  ticks
  [ "$p0" = "$procs" ] || echo "    warning: the server's processes changed during the run ($p0-> $procs)" >&2
  m=$(awk -v n="$n" -v f="$f" -v d=$((sum - before)) -v hz="$hz" -v t0="$t0" -v t1="$t1" \
    'BEGIN {printf "%.0f %.3f %d %.2f\n", n / (t1 - t0), d * 1e6 / hz / n, f, d / hz / (t1 - t0)}')
}

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
range() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s – %s", lo, hi}'; }

echo "machine: $(nproc) cores, $(uname -r), $(go version | cut -d' ' -f3); $(uptime | sed 's/.*load/load/')"
echo "rounds $rounds; saturating: wrk -t1 -c$conns -d${sat}s (HTTP), echoload -c$conns -d${sat}s (echo);" \
  "fixed rate: echoload -c$conns -d${fixed}s at $frac × the bare limit's saturated throughput"
echo "bare = 2 × bench/bare (GOMAXPROCS=1, SO_REUSEPORT, no master); flock = example or example/echo, -workers 2"
echo "cpu = utime+stime of every server process per request, in µs; cores = CPU seconds per second used by the server"
for mode in $modes; do
  proto=${mode%%-*} kind=${mode#*-}
  unit=req
  [ "$proto" = echo ] && unit=msg
  echo
  # The fixed rate: the bare limit's saturated throughput, measured once.
  serve bare "$proto"
  load "$proto" "$kind" sat 1 # warm-up
  measure "$proto" "$kind" sat "$sat"
  cal=${m%% *}
  stop_servers
  rate=$(awk -v c="$cal" -v f="$frac" 'BEGIN {printf "%.0f", c * f}')
  echo "$mode: bare limit saturated at $cal $unit/s; fixed rate $rate $unit/s"
  for level in sat fixed; do : >"$res/$mode.$level.rps"; : >"$res/$mode.$level.cpu"; done
  for r in $(seq "$rounds"); do
    order="bare flock"
    [ $((r % 2)) = 0 ] && order="flock bare"
    declare -A R=()
    for s in $order; do
      serve "$s" "$proto"
      load "$proto" "$kind" sat 1 # warm-up
      measure "$proto" "$kind" sat "$sat"
      R[$s.sat]=$m
      measure "$proto" "$kind" fixed "$fixed" "$rate"
      R[$s.fixed]=$m
      stop_servers
    done
    for level in sat fixed; do
      read -r br bc bf bu <<<"${R[bare.$level]}"
      read -r fr fc ff fu <<<"${R[flock.$level]}"
      rr=$(awk -v a="$fr" -v b="$br" 'BEGIN {printf "%.3f", a / b}')
      cr=$(awk -v a="$fc" -v b="$bc" 'BEGIN {printf "%.3f", a / b}')
      echo "$rr" >>"$res/$mode.$level.rps"
      echo "$cr" >>"$res/$mode.$level.cpu"
      fails=
      [ "$bf$ff" = 00 ] || fails="   FAILURES bare $bf flock $ff"
      printf '%-14s round %d %-5s  bare %7d %s/s %7.3f µs %4.2f cores | flock %7d %s/s %7.3f µs %4.2f cores | flock/bare: %s/s %s  cpu/%s %s%s\n' \
        "$mode" "$r" "$level" "$br" "$unit" "$bc" "$bu" "$fr" "$unit" "$fc" "$fu" "$unit" "$rr" "$unit" "$cr" "$fails"
    done
    unset R
  done
done

echo
echo "flock / bare: median (range) over the rounds"
printf '%-14s %-6s %-26s %s\n' mode level "throughput" "cpu per request"
for mode in $modes; do
  for level in fixed sat; do
    printf '%-14s %-6s %-26s %s\n' "$mode" "$level" \
      "$(median <"$res/$mode.$level.rps") ($(range <"$res/$mode.$level.rps"))" \
      "$(median <"$res/$mode.$level.cpu") ($(range <"$res/$mode.$level.cpu"))"
  done
done
