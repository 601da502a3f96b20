#!/usr/bin/env python3
"""zpoline::format against strace 6.1 on real programs.

Each program runs twice: under the preload shim with the trace hook library (our formatter,
`[pid N] line` per call) and under `strace -f`. Lines are normalised (pids, addresses of 6+ hex
digits, timestamps, strace's padding before ` = `, <unfinished ...>/<... resumed> joined) and
compared as multisets, restricted to our side: the dynamic loader's calls, made before the
preload constructor, are not on our side by design. A line of ours is identical if strace printed
the same line (after normalising) and it was not already taken by another of ours.

Usage: compare.py [--build DIR] [--fds] [--show N] [--only NAME,...]
  --fds    compare strace -y with the hook's decode_fds (ZPOLINE_HOOK_TRACE_FDS=1)
  --show N print up to N differing lines per syscall (ours, and the closest strace line)
Prints, per program, the share of our lines that strace printed identically, then the
differing lines of all programs counted by syscall name.

What is left after the normalising is mostly run-to-run difference, not formatting: pipe
chunk sizes (tar | cat), random bytes (getrandom is normalised, sqlite's journal headers and
DNS query ids are not), other processes' /proc entries (ps), directory sizes, which futex
waits happen. Two come from tracing in-process: the hook library's output descriptor (900)
shows up where a program scans its descriptors (xargs), and a call interrupted by a signal
returns EINTR to the hook where strace sees the kernel's ERESTARTNOHAND.
"""
import argparse
import collections
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# name: shell command (run by /bin/sh -c under both tracers: the shell's own calls count too).
PROGRAMS = [
    ("ls", "ls -la /usr/share/doc >/dev/null"),
    ("cat", "cat /etc/os-release >/dev/null"),
    ("date", "date >/dev/null"),
    ("python3", "python3 -c 'import json,socket,os'"),
    ("sqlite3", "sqlite3 :memory: 'select 1' >/dev/null"),
    ("git-version", "git --version >/dev/null"),
    ("git-status", "cd {root} && git status >/dev/null"),
    ("tar", "tar cf - /usr/share/doc/bash 2>/dev/null | cat >/dev/null"),
    ("find", "find /usr/share/doc -maxdepth 2 >/dev/null"),
    ("sort", "sort /etc/services >/dev/null"),
    ("sh-pipe", "sh -c 'echo hi | wc' >/dev/null"),
    ("uname", "uname -a >/dev/null"),
    ("id", "id >/dev/null"),
    ("env", "env >/dev/null"),
    ("stat", "stat /etc/passwd >/dev/null"),
    ("getent", "getent hosts localhost >/dev/null"),
    ("cp-mv", "cp /etc/passwd {tmp}/p && mv {tmp}/p {tmp}/q && rm {tmp}/q"),
    ("du", "du -s /usr/share/doc >/dev/null"),
    ("df", "df >/dev/null"),
    ("ps", "ps >/dev/null"),
    ("files", "mkdir {tmp}/d && touch {tmp}/d/f && chmod 600 {tmp}/d/f && ln -s f {tmp}/d/l"
              " && readlink {tmp}/d/l >/dev/null && rm -r {tmp}/d"),
    ("gzip", "gzip -c /etc/services | gzip -dc | md5sum >/dev/null"),
    ("awk", "awk '{{n++}} END {{print n}}' /etc/services >/dev/null"),
    ("perl", "perl -e 'opendir(D, \"/etc\"); @x = readdir(D); print scalar(@x)' >/dev/null"),
    ("timeout", "timeout 5 sleep 0.01"),
    ("xargs", "echo /etc/hostname /etc/passwd | xargs head -c 10 >/dev/null"),
    ("bash", "bash -c 'for i in 1 2; do echo $i; done | tail -1' >/dev/null"),
    ("py-workload", "python3 " + os.path.join(HERE, "workload.py")),
    ("gcc", "printf 'int main(){{return 0;}}' > {tmp}/t.c && gcc -o {tmp}/t {tmp}/t.c && {tmp}/t"),
    ("git-log", "cd {root} && git log --oneline -5 >/dev/null"),
    ("sqlite3-file", "sqlite3 {tmp}/db 'create table t(x); insert into t values(1);' && rm {tmp}/db"),
]


def strace_lines(path):
    pending = {}
    lines = []
    with open(path, errors="replace") as f:
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
                rest = resumed.group(1)
                space = head.endswith(",") and not rest.startswith((")", " "))
                text = head + (" " if space else "") + rest
            lines.append(text)
    return lines


def our_lines(path):
    """Our lines. The hook prints a call that may not return (execve) before making it, with
    `= ?`, and again with its error if it fails: a `?` line followed by the same call's failure
    is left out, the others become strace's `= 0`. A fork's return in the child, which the
    in-process hook sees and strace does not, is left out."""
    entries = []
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        for raw in f:
            match = re.match(r"^\[pid (\d+)\] (.*)$", raw.rstrip("\n"))
            if match:
                entries.append([int(match.group(1)), match.group(2)])
    pending = {}
    for index, (pid, text) in enumerate(entries):
        if re.match(r"^execve\(.*\) = \?$", text):
            pending[pid] = index
        elif pid in pending and text.startswith("execve(") and text.rsplit(" = ", 1)[0] == \
                entries[pending[pid]][1].rsplit(" = ", 1)[0]:
            entries[pending.pop(pid)][1] = None
    lines = []
    for pid, text in entries:
        if text is None or re.match(r"^(clone3?|fork|vfork)\(.*\) = 0$", text):
            continue
        lines.append(re.sub(r"^(execve\(.*\)) = \?$", r"\1 = 0", text))
    return lines


def normalise(text):
    text = re.sub(r"\)\s+= ", ") = ", text)
    text = re.sub(r"0x[0-9a-f]{6,}", "0xADDR", text)
    text = re.sub(r"(tv_n?sec|tv_u?sec)=\d+", r"\1=N", text)
    text = re.sub(r"(socket|pipe|anon_inode):\[\d+\]", r"\1:[N]", text)
    # ephemeral ports, free space: different in every run
    text = re.sub(r"htons\(\d{4,5}\)", "htons(PORT)", text)
    # temporary files' random names (python's tempfile, gcc's)
    text = re.sub(r"/tmp/(?:tmp[a-z0-9_]{8}|[a-z0-9_]{8}|cc[A-Za-z0-9]{6})(?=[/.\">])", "/tmp/TMP", text)
    # a process's own /proc entries name its pid
    text = re.sub(r"/proc/\d+/", "/proc/PID/", text)
    text = re.sub(r"(f_bfree|f_bavail|f_ffree)=\d+", r"\1=N", text)
    if text.startswith(("sysinfo(", "getrandom(")):
        text = re.sub(r"=\d+", "=N", text)
        text = re.sub(r'"(\\.|[^"\\])*"', '"..."', text)
    # ids: results of the calls that return one, and wait4's first argument
    text = re.sub(r"^((?:clone3?|fork|vfork|gettid|getpid|getppid|wait4|set_tid_address)\(.*\) = )\d+$",
                  r"\1PID", text)
    text = re.sub(r"^(wait4|kill|tgkill|prlimit64|sched_getaffinity|sched_setaffinity)\(\d+,", r"\1(PID,", text)
    text = re.sub(r"parent_tid=\[\d+\]", "parent_tid=[PID]", text)
    return text


def name_of(line):
    match = re.match(r"^(\w+)\(", line)
    return match.group(1) if match else "?"


def run(build, name, command, fds, workdir):
    ours = os.path.join(workdir, name + ".ours")
    theirs = os.path.join(workdir, name + ".theirs")
    for path in (ours, theirs):
        if os.path.exists(path):
            os.unlink(path)
    command = command.format(root=ROOT, tmp=workdir)
    env = dict(os.environ)
    hook = os.path.join(build, "examples/hooks/libhook-trace.so")
    preload = os.path.join(build, "examples/preload/libzpoline-preload.so")
    env.update({"ZPOLINE_HOOK": hook, "ZPOLINE_HOOK_TRACE_OUTPUT": ours, "LD_PRELOAD": preload})
    if fds:
        env["ZPOLINE_HOOK_TRACE_FDS"] = "1"
    subprocess.run(["/bin/sh", "-c", command], env=env, cwd=workdir, timeout=300)
    # The same environment's size for strace's run (execve's `/* N vars */`, env's output):
    # the names changed by one letter, so the tracee is not preloaded.
    env2 = dict(os.environ)
    env2.update({"ZPOLINE_HOOX": hook, "ZPOLINE_HOOX_TRACE_OUTPUT": ours, "LD_PRELOAX": preload})
    if fds:
        env2["ZPOLINE_HOOX_TRACE_FDS"] = "1"
    args = ["strace", "-f", "-o", theirs] + (["-y"] if fds else []) + ["/bin/sh", "-c", command]
    subprocess.run(args, env=env2, cwd=workdir, timeout=300)
    return our_lines(ours), strace_lines(theirs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--fds", action="store_true")
    parser.add_argument("--show", type=int, default=0)
    parser.add_argument("--only", default="")
    parser.add_argument("--workdir", default="")
    options = parser.parse_args()
    if not shutil.which("strace"):
        print("no strace")
        return 77
    workdir = options.workdir or tempfile.mkdtemp(prefix="format_vs_strace.")
    os.makedirs(workdir, exist_ok=True)
    only = set(filter(None, options.only.split(",")))
    by_name = collections.Counter()
    examples = collections.defaultdict(list)
    total_ours = total_same = 0
    for name, command in PROGRAMS:
        if only and name not in only:
            continue
        program = command.split()[0] if not command.startswith("cd ") else "git"
        if not shutil.which(program):
            print(f"{name:12} (not installed)")
            continue
        ours, theirs = run(options.build, name, command, options.fds, workdir)
        ours = [normalise(t) for t in ours]
        theirs = [normalise(t) for t in theirs]
        pool = collections.Counter(theirs)
        missing = []
        same = 0
        for line in ours:
            if pool[line] > 0:
                pool[line] -= 1
                same += 1
            else:
                missing.append(line)
        left = [line for line, n in pool.items() for _ in range(n)]
        for line in missing:
            by_name[name_of(line)] += 1
            if len(examples[name_of(line)]) < options.show:
                candidates = [t for t in left if name_of(t) == name_of(line)]
                close = difflib.get_close_matches(line, candidates, n=1, cutoff=0.0)
                examples[name_of(line)].append((name, line, close[0] if close else None))
        total_ours += len(ours)
        total_same += same
        share = 100.0 * same / len(ours) if ours else 0.0
        print(f"{name:12} {same:5}/{len(ours):5} identical ({share:5.1f}%)")
    share = 100.0 * total_same / total_ours if total_ours else 0.0
    print(f"{'TOTAL':12} {total_same:5}/{total_ours:5} identical ({share:5.1f}%)")
    print("\ndiffering lines of ours by syscall:")
    for call, count in by_name.most_common():
        print(f"  {call:22} {count}")
        for program, line, close in examples[call]:
            print(f"      [{program}] ours:   {line}")
            print(f"      [{program}] strace: {close}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
