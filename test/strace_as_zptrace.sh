#!/bin/sh
# Stands in for zptrace when checking test_zptrace_fidelity.py and bench_zptrace.py themselves:
# strace with the same arguments, so both sides are strace and the comparison must give ~100%.
# env -u PWD: this shell exports PWD, which the script's fixed environment does not have.
exec env -u PWD strace "$@"
