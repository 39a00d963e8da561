# Shell functions the benchmark scripts share (bench/limit.sh,
# bench/proxy/run.sh): source it. They use the caller's $res (a folder for
# raw output) and $loads (the load generator running, for the cleanup).

# run CMD...: run a load generator in the background, its output (and
# errors) in $res/load.out, and wait for it (in this shell, not a
# subshell, so that a signal reaches the trap at once).
run() {
  "$@" >"$res/load.out" 2>&1 &
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

# tree_ticks PID...: sets $sum to utime + stime in clock ticks, summed over
# the processes of the trees of the PIDs, and $procs to the pids counted,
# so that a process appearing or vanishing during a slice (whose ticks
# would be missed) is noticed.
tree_ticks() {
  local p s a
  sum=0
  procs=$(for p in "$@"; do tree "$p"; done | sort -n | tr '\n' ' ')
  for p in $procs; do
    s=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    s=${s##*) } # fields from 3 (state) on: the name may hold spaces
    read -ra a <<<"$s"
    sum=$((sum + a[11] + a[12])) # fields 14 (utime) and 15 (stime)
  done
}

# stats FILE: the median (range) and the mean ± standard error of the
# numbers in FILE, one a line.
stats() {
  sort -g "$1" | awk '{a[NR] = $1; s += $1; q += $1 * $1}
  END {m = s / NR; se = NR > 1 ? sqrt((q - NR * m * m) / (NR - 1) / NR) : 0
    printf "%.3f (%.3f – %.3f); %.3f ± %.3f", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[1], a[NR], m, se}'
}
