#!/bin/sh
# Runs the whole benchmark suite and prints every table (docs/PERFORMANCE.md):
#   bench/run_suite.sh [BUILD_DIR] [--quick]
# also registered as `meson test -C build --benchmark --suite bench -v` (full) and
# `--suite bench-quick` (smoke run, a few seconds).
set -e
build=${1:-build}
shift 2>/dev/null || true
for program in bench_syscall bench_mechanisms bench_modes bench_install bench_python_startup \
    bench_workload; do
  # bench_python_startup is built only with the examples (it runs the preload shim).
  [ -x "$build/bench/$program" ] || [ "$program" != bench_python_startup ] || continue
  echo "==== $program $*"
  "$build/bench/$program" "$@"
  echo
done
