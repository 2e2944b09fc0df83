# Shared by the benchmarks (sourced after scripts/lib.sh): the machine's description, medians,
# a precise clock and Debian packages only the benchmarks need.

# machine prints "N cores, MODEL" for the results' headers.
machine() {
  printf '%s cores, %s' "$(nproc)" "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
}

# now_ms prints the wall clock in milliseconds (bash's own clock: no process is started).
now_ms() { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }

# median reads numbers, one a line, and prints their median.
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ratio A B prints A/B with two decimals.
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

# bench_packages PACKAGE... installs the Debian packages that are missing, quietly.
bench_packages() {
  local need=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing Debian packages for the benchmarks: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
}
