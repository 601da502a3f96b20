#!/usr/bin/env python3
"""One event of the combination matrix (test/matrix/cell.cpp), in every mode with every kind of
hook, each cell in its own process, repeated.

    test_matrix.py CELL_PROGRAM EVENT

ZPOLINE_MATRIX_REPETITIONS (default 3) sets how often each cell runs; ZPOLINE_MATRIX_SEED fixes
the seed the cells' timing comes from (printed, so that a run can be replayed). A failing cell
prints the command that replays it alone. Exit status: 0 when every cell passed, 1 otherwise,
77 when every cell was skipped.
"""
import os
import random
import subprocess
import sys
import time

MODES = ["eager", "exhaustive", "lazy"]
HOOKS = ["plain", "busy", "library", "library_busy", "chain"]
CELL_TIMEOUT = 60  # seconds; a cell takes well under one


def main():
    cell, event = sys.argv[1], sys.argv[2]
    repetitions = int(os.environ.get("ZPOLINE_MATRIX_REPETITIONS", "3"))
    seed = int(os.environ.get("ZPOLINE_MATRIX_SEED", str(time.time_ns() % 1000003)))
    generator = random.Random(seed)
    print(f"matrix/{event}: {len(MODES)} modes x {len(HOOKS)} hooks x {repetitions} "
          f"repetitions, seed {seed} (ZPOLINE_MATRIX_SEED={seed} replays this run)")
    failures, skipped, passed = [], [], 0
    started = time.monotonic()
    for repetition in range(repetitions):
        for mode in MODES:
            for hook in HOOKS:
                cell_seed = generator.randrange(1 << 31)
                command = [cell, mode, hook, event, str(cell_seed)]
                try:
                    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         timeout=CELL_TIMEOUT, text=True, errors="replace")
                    status, output = run.returncode, run.stdout
                except subprocess.TimeoutExpired as expired:
                    status = "hung"
                    output = (expired.stdout or b"").decode(errors="replace") \
                        if isinstance(expired.stdout, bytes) else (expired.stdout or "")
                if status == 0:
                    passed += 1
                elif status == 77:
                    skipped.append((mode, hook, output.strip()))
                else:
                    failures.append((command, status, output))
    elapsed = time.monotonic() - started
    for command, status, output in failures:
        what = "hung" if status == "hung" else (
            f"killed by signal {-status}" if isinstance(status, int) and status < 0
            else f"exit status {status}")
        print(f"FAILED ({what}): {' '.join(command)}")
        for line in output.splitlines()[-20:]:
            print(f"    {line}")
    for mode, hook, why in skipped[:5]:
        print(f"skipped {mode}/{hook}: {why}")
    total = len(MODES) * len(HOOKS) * repetitions
    print(f"matrix/{event}: {passed} passed, {len(failures)} failed, {len(skipped)} skipped "
          f"of {total} cell runs in {elapsed:.1f} s (seed {seed})")
    if failures:
        return 1
    return 77 if passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
