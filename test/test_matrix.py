#!/usr/bin/env python3
"""One event of the combination matrix (test/matrix/cell.cpp), in every mode with every kind of
hook, each cell in its own process, repeated.

    test_matrix.py CELL_PROGRAM EVENT

MATRIX_REPETITIONS (default 3) sets how often each cell runs; MATRIX_SEED fixes
the seed the cells' timing comes from (printed, so that a run can be replayed);
MATRIX_CELL_TIMEOUT (default 60 s) is when a cell counts as hung, and then what each of
its threads waits in is printed, with backtraces where gdb is installed. (Not ZPOLINE_*: the
library refuses variables of its own prefix it does not know, and the other tests install with
the environment.) A failing cell
prints the command that replays it alone. Exit status: 0 when every cell passed, 1 otherwise,
77 when every cell was skipped.
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

MODES = ["eager", "exhaustive", "lazy"]
# page_zero forced as root, and the automatic choice in a process without CAP_SYS_RAWIO and in
# one switched to the user nobody (the near mechanism, as for an ordinary user or in a
# container).
MECHANISMS = ["page_zero", "unprivileged", "nobody"]
HOOKS = ["plain", "busy", "library", "library_busy", "chain"]
CELL_TIMEOUT = int(os.environ.get("MATRIX_CELL_TIMEOUT", "60"))  # s; a cell takes < 1


def thread_states(pid):
    """What each thread of a hung cell is doing: its kernel state, the call it waits in, its
    signal masks and, where gdb is installed, every thread's backtrace."""
    lines = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return ["(the cell's threads could not be read)"]
    for tid in tids:
        def read(name):
            try:
                with open(f"/proc/{pid}/task/{tid}/{name}") as file:
                    return file.read().strip()
            except OSError:
                return "?"
        status = dict(line.split(":", 1) for line in read("status").splitlines() if ":" in line)
        lines.append(f"thread {tid} ({read('comm')}): state{status.get('State', '?')}, "
                     f"waits in {read('wchan')}, syscall {read('syscall')}, "
                     f"blocked{status.get('SigBlk', '?')}, pending{status.get('SigPnd', '?')}")
    if shutil.which("gdb"):
        try:
            debugger = subprocess.run(
                ["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "thread apply all bt 30"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                timeout=60)
            lines += [line for line in debugger.stdout.splitlines()
                      if line.startswith(("Thread ", "#"))]
        except subprocess.TimeoutExpired:
            lines.append("(gdb did not answer)")
    return lines


def run_cell(command):
    """Runs one cell: (exit status or "hung", its output)."""
    with tempfile.TemporaryFile(mode="w+", errors="replace") as output:
        cell = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            status = cell.wait(timeout=CELL_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = "hung"
            states = thread_states(cell.pid)
            cell.kill()
            cell.wait()
        output.seek(0)
        text = output.read()
    if status == "hung":
        text += "\n" + "\n".join(states)
    return status, text


def main():
    cell, event = sys.argv[1], sys.argv[2]
    repetitions = int(os.environ.get("MATRIX_REPETITIONS", "3"))
    seed = int(os.environ.get("MATRIX_SEED", str(time.time_ns() % 1000003)))
    generator = random.Random(seed)
    print(f"matrix/{event}: {len(MECHANISMS)} mechanisms x {len(MODES)} modes x {len(HOOKS)} "
          f"hooks x {repetitions} repetitions, seed {seed} (MATRIX_SEED={seed} replays this run)")
    failures, skipped, passed = [], [], 0
    started = time.monotonic()
    for repetition in range(repetitions):
        for mechanism in MECHANISMS:
            for mode in MODES:
                for hook in HOOKS:
                    cell_seed = generator.randrange(1 << 31)
                    command = [cell, mode, hook, event, str(cell_seed), mechanism]
                    status, output = run_cell(command)
                    if status == 0:
                        passed += 1
                    elif status == 77:
                        skipped.append((f"{mechanism}/{mode}", hook, output.strip()))
                    else:
                        failures.append((command, status, output))
    elapsed = time.monotonic() - started
    for command, status, output in failures:
        what = "hung" if status == "hung" else (
            f"killed by signal {-status}" if isinstance(status, int) and status < 0
            else f"exit status {status}")
        print(f"FAILED ({what}): {' '.join(command)}")
        for line in output.splitlines()[-20 if status != "hung" else -400:]:
            print(f"    {line}")
    for mode, hook, why in skipped[:5]:
        print(f"skipped {mode}/{hook}: {why}")
    total = len(MECHANISMS) * len(MODES) * len(HOOKS) * repetitions
    print(f"matrix/{event}: {passed} passed, {len(failures)} failed, {len(skipped)} skipped "
          f"of {total} cell runs in {elapsed:.1f} s (seed {seed})")
    if failures:
        return 1
    return 77 if passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
