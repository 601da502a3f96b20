#!/usr/bin/env python3
"""The trace example against strace: the same workload (examples/trace's) traced by the example
in-process and by `strace -f` on the unhooked binary (`trace --no-hook`). Lines are compared after
normalising what differs from run to run (pids and tids, addresses, strace's column padding), as
multisets (threads interleave differently in every run), between the markers the workload makes
(prctl(PR_SET_NAME, "workload") ... prctl(PR_SET_NAME, "trace")). strace's `+++ exited` and
`--- SIGCHLD` lines are not system calls and are left out.

Reports the share of strace's lines that the example printed identically; fails below 90%.

Usage: test_trace_vs_strace.py TRACE_BINARY
Exits 77 (skipped) without strace or when the example cannot install (page 0 refused).
"""
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

BEGIN = 'prctl(PR_SET_NAME, "workload") = 0'
END = 'prctl(PR_SET_NAME, "trace") = 0'
THRESHOLD = 0.90


def strace_lines(path):
    """(pid, line) of a `strace -f -o` file, with <unfinished ...>/<... resumed> joined."""
    pending = {}
    lines = []
    with open(path) as f:
        for raw in f:
            match = re.match(r"^(\d+)\s+(.*)$", raw.rstrip("\n"))
            if not match:
                continue
            pid, text = int(match.group(1)), match.group(2)
            if text.startswith("+++") or text.startswith("---"):
                continue
            if text.endswith("<unfinished ...>"):
                pending[pid] = text[: -len("<unfinished ...>")].rstrip()
                continue
            resumed = re.match(r"^<\.\.\. \w+ resumed>(.*)$", text)
            if resumed:
                head = pending.pop(pid, "")
                text = head + (" " if head.endswith(",") else "") + resumed.group(1)
            lines.append((pid, text))
    return lines


def trace_lines(path, main_pid):
    lines = []
    with open(path) as f:
        for raw in f:
            text = raw.rstrip("\n")
            match = re.match(r"^\[pid (\d+)\] (.*)$", text)
            pid = main_pid
            if match:
                pid, text = int(match.group(1)), match.group(2)
            if re.match(r"^\w+\(", text):
                lines.append((pid, text))
    return lines


def between_markers(lines):
    start = next((i for i, (_, t) in enumerate(lines) if normalise_spacing(t) == BEGIN), None)
    if start is None:
        return []
    main = lines[start][0]
    end = next((i for i in range(start, len(lines))
                if lines[i][0] == main and normalise_spacing(lines[i][1]) == END), len(lines) - 1)
    return lines[start:end + 1]


def normalise_spacing(text):
    return re.sub(r"\)\s+= ", ") = ", text)


def normalise(lines):
    pids = {pid for pid, _ in lines}
    # Thread and child ids that appear as results and arguments (clone, wait4, gettid...).
    for _, text in lines:
        match = re.match(r"^(clone3?|fork|vfork|gettid|getpid)\(.*\) = (\d+)$",
                         normalise_spacing(text))
        if match:
            pids.add(int(match.group(2)))
    out = []
    for _, text in lines:
        text = normalise_spacing(text)
        text = re.sub(r"0x[0-9a-f]{5,}", "0xADDR", text)
        for pid in pids:
            text = re.sub(rf"\b{pid}\b", "PID", text)
        out.append(text)
    return out


def compare(name, expected, actual):
    want = collections.Counter(expected)
    have = collections.Counter(actual)
    matched = sum(min(count, have[line]) for line, count in want.items())
    ratio = matched / max(1, len(expected))
    print(f"{name}: {matched} of strace's {len(expected)} lines identical "
          f"({100 * ratio:.1f}%); the example printed {len(actual)} lines")
    for line, count in sorted((want - have).items()):
        print(f"  only strace ({count}x): {line}")
    for line, count in sorted((have - want).items()):
        print(f"  only trace  ({count}x): {line}")
    return ratio


def run(binary, directory, filter_expression):
    with tempfile.TemporaryDirectory() as scratch:
        strace_out = os.path.join(scratch, "strace.txt")
        trace_out = os.path.join(scratch, "trace.txt")
        extra = ["-e", filter_expression] if filter_expression else []
        strace_extra = (["-e", filter_expression + ",prctl"] if filter_expression else [])
        subprocess.run(["strace", "-f", "-qq", "-o", strace_out] + strace_extra +
                       [binary, "--no-hook", directory],
                       check=True, stdout=subprocess.DEVNULL)
        result = subprocess.run([binary, "-o", trace_out] +
                                (["-e", filter_expression + ",prctl"] if extra else []) +
                                [directory], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if result.returncode != 0:
            if "page 0" in result.stderr or "mmap_min_addr" in result.stderr:
                print("SKIP: " + result.stderr)
                sys.exit(77)
            sys.exit(f"trace failed: {result.stderr}")
        expected = between_markers(strace_lines(strace_out))
        with open(trace_out) as f:
            first = f.readline()
        actual = between_markers(trace_lines(trace_out, os.getpid()))
        if not expected or not actual:
            sys.exit(f"markers missing: strace {len(expected)} lines, trace {len(actual)} lines "
                     f"(first line of the trace: {first!r})")
        # The example's own main thread prints without a prefix: give it the marker's pid.
        return normalise(expected), normalise(actual)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if shutil.which("strace") is None:
        print("SKIP: strace is not installed")
        sys.exit(77)
    binary = os.path.abspath(sys.argv[1])
    ratios = []
    for name, expression in (("whole workload", None),
                             ("-e trace=openat,read,write,close,gettid",
                              "trace=openat,read,write,close,gettid")):
        expected, actual = run(binary, "/etc", expression)
        ratios.append(compare(name, expected, actual))
    worst = min(ratios)
    print(f"match ratio: {100 * worst:.1f}% (threshold {100 * THRESHOLD:.0f}%)")
    sys.exit(0 if worst >= THRESHOLD else 1)


if __name__ == "__main__":
    main()
