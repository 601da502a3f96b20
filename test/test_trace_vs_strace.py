#!/usr/bin/env python3
"""The trace example against strace: the same workload (examples/trace's) traced by the example
in-process and by `strace -f` on the unhooked binary (`trace --no-hook`). Lines are compared after
normalising what differs from run to run (pids and tids, addresses, strace's column padding), as
multisets (threads interleave differently in every run), between the markers the workload makes
(prctl(PR_SET_NAME, "workload") ... prctl(PR_SET_NAME, "trace")). strace's `+++ exited` and
`--- SIGCHLD` lines are not system calls and are left out.

Every line must be on both sides: a line only strace printed (a call the example missed or
printed differently) and a line only the example printed (a call strace did not see, or printed
differently) both fail the test. One kind of line is left out of the comparison, on both sides,
by the rule in TIMING_DEPENDENT: it depends on how the threads were scheduled in that run, not
on the tracer.

Prints the share of lines identical on both sides (matched / lines of either side); fails unless
it is 100%.

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

# pthread_join's wait for the worker thread: a FUTEX_WAIT on the thread's tid word (the value
# waited for is the thread's id, PID after normalising), made only if the thread has not exited
# yet when the main thread joins it; if it exited meanwhile, the wait returns EAGAIN or is not
# made at all. Whether the worker finishes first is a matter of scheduling, different in every
# run (strace -f slows the threads down differently than the in-process tracer does). At most
# one per thread the workload starts (clone3 lines) is allowed on either side; left out of the
# comparison on both.
TIMING_DEPENDENT = re.compile(
    r"^futex\(0xADDR, FUTEX_WAIT_BITSET\|FUTEX_CLOCK_REALTIME, PID, NULL, FUTEX_BITSET_MATCH_ANY\)"
    r" = (0|-1 EAGAIN \(Resource temporarily unavailable\))$")


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


# Where process and thread ids appear in the workload's lines: the result of the calls that
# return one, clone3's parent_tid, wait4's first argument, the value pthread_join's futex waits
# for, and the targets of kill/tkill/tgkill. Only there are known ids replaced by PID: replacing
# them anywhere would also hit a size or count that happens to equal an id (read(3, ..., 8191)
# in a run where a thread got id 8191), and a wrong id (parent_tid=[0]) must stay visible.
ID_FIELDS = [re.compile(pattern) for pattern in (
    r"^(?:clone3?|fork|vfork|gettid|getpid|wait4)\(.*\) = (?P<id>\d+)$",
    r"parent_tid=\[(?P<id>\d+)\]",
    r"^wait4\((?P<id>\d+),",
    r"^futex\(0xADDR, FUTEX_WAIT[A-Z_|]*, (?P<id>\d+),",
    r"^(?:kill|tkill|tgkill)\((?P<id>\d+),",
    r"^tgkill\(\d+, (?P<id>\d+),",
)]


def normalise(lines):
    pids = {pid for pid, _ in lines}
    # Thread and child ids that appear as results (clone, fork, gettid...).
    for _, text in lines:
        match = re.match(r"^(clone3?|fork|vfork|gettid|getpid)\(.*\) = (\d+)$",
                         normalise_spacing(text))
        if match:
            pids.add(int(match.group(2)))
    out = []
    for _, text in lines:
        text = normalise_spacing(text)
        text = re.sub(r"0x[0-9a-f]{5,}", "0xADDR", text)
        for field in ID_FIELDS:
            for match in reversed(list(field.finditer(text))):
                if int(match.group("id")) in pids:
                    text = text[:match.start("id")] + "PID" + text[match.end("id"):]
        out.append(text)
    return out


def leave_out_timing_dependent(lines):
    """Lines without those TIMING_DEPENDENT matches, and how many it matched."""
    kept = [line for line in lines if not TIMING_DEPENDENT.match(line)]
    return kept, len(lines) - len(kept)


def compare(name, expected, actual):
    """Share of lines identical on both sides, and a list of problems (empty if none)."""
    problems = []
    threads = sum(1 for line in expected if line.startswith("clone3("))
    expected, strace_waits = leave_out_timing_dependent(expected)
    actual, trace_waits = leave_out_timing_dependent(actual)
    for side, waits in (("strace", strace_waits), ("trace", trace_waits)):
        if waits > threads:
            problems.append(f"{side} printed {waits} pthread_join waits for {threads} threads")
    want = collections.Counter(expected)
    have = collections.Counter(actual)
    matched = sum((want & have).values())
    lines = matched + sum((want - have).values()) + sum((have - want).values())
    ratio = matched / max(1, lines)
    print(f"{name}: {matched} of {lines} lines identical ({100 * ratio:.1f}%): strace printed "
          f"{len(expected)}, the example {len(actual)}; left out as timing-dependent: "
          f"{strace_waits} of strace's, {trace_waits} of the example's")
    for line, count in sorted((want - have).items()):
        problems.append(f"only strace ({count}x): {line}")
    for line, count in sorted((have - want).items()):
        problems.append(f"only trace  ({count}x): {line}")
    for problem in problems:
        print("  " + problem)
    return ratio, problems


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
    failed = False
    for name, expression in (("whole workload", None),
                             ("-e trace=openat,read,write,close,gettid",
                              "trace=openat,read,write,close,gettid")):
        expected, actual = run(binary, "/etc", expression)
        ratio, problems = compare(name, expected, actual)
        ratios.append(ratio)
        failed |= bool(problems)
    print(f"identical lines: {100 * min(ratios):.1f}% (required: 100%)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
