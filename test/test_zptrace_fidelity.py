#!/usr/bin/env python3
"""zptrace against strace 6.1 on real Debian programs, line by line, per process.

Each program below runs twice in the same freshly created working directory (same path, same
fixed input files, same fixed environment, stdin /dev/null, stdout and stderr to files):

  strace -ff -o OUT/s -- CMD        and        ZPTRACE -ff -o OUT/z -- CMD

Both write one file per task (process or thread), PREFIX.TID.

Pairing the files. A task's file is named by its tid, which differs between the runs, and the
global order in which tasks are created is itself scheduling dependent when several threads fork
or spawn. So every task gets a label from the process tree instead: the task nobody created is
T0; the k-th successful clone/clone3/fork/vfork line (return value > 0, counted in the order of
the lines in the creating task's own file, which is that task's program order) gives the child
label PARENT.k (T0.1, T0.2, T0.1.1...). The labels do not depend on how tasks interleave. The
lines of a process's threads (tasks created with CLONE_THREAD, and theirs) are pooled under the
process's label, because which thread does which part of the work (GNU sort's merges and
output, for one) is the scheduler's choice; processes with equal labels are paired. A label
present on one side only is a process the other tracer did not report: all of its lines count
as differences. (Task ids inside lines, gettid() = T0.1 and the like, keep the task's own
label, so a thread reported under the wrong id is still a difference.)

Normalising (NORMALISE_RULES below, applied to both sides alike; each rule says why it cannot
hide a tracer difference): unfinished/resumed halves are joined first; then addresses, column
padding, -t/-T timestamps, task ids (replaced by the task's label where the id is a traced task,
by PID otherwise, only in the places normalise_pids lists), and the few values the kernel gives
differently on every run.

Comparison: per pair of processes, as multisets of lines (threads make the same calls in a
different order in every run). identical = size of the multiset intersection. The share is

    sum of identical / sum of max(lines strace, lines zptrace)

with both sums over the pairs (a side's extra lines lower it as much as the other side's missing
lines). The traced program's exit status and its stdout are compared too, one line each.

Lines whose number depends on scheduling (TIMING_DEPENDENT: futex waits and wakes, SIGCHLD
coalescing and its handler's rt_sigreturn, a thread making a new malloc arena or reusing a dead
thread's) are not compared line by line but by presence per program: a group on one side and
not at all on the other counts fully as a difference. Their counts per side are printed.

strace against strace (test/strace_as_zptrace.sh, 10 runs on a shared 2-core machine):
99.97-100.00%. What remained, all of it scheduling: sort --parallel=2's second merge thread
makes an arena in some runs and not in others (1 line in 7 547), and before the arena rule,
one more 1 MiB output buffer in xz -T2 when more blocks than threads were in flight (hence the
two-block input).

Usage: test_zptrace_fidelity.py ZPTRACE_BINARY [--min-percent P] [--programs a,b,...] [--verbose]
           [--strace PATH] [--keep]
       test_zptrace_fidelity.py --self-test      (the pairing and the rules on made-up lines)
Exit 0 at or above --min-percent (default 97), 1 below, 77 (skipped) without strace or when
zptrace cannot install (it exits 77, or says "page 0").
Checking the script itself: test/strace_as_zptrace.sh as ZPTRACE_BINARY runs strace on both
sides; that must give about 100%.
"""
import argparse
import collections
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

# ------------------------------------------------------------------------------------------
# The programs. Each: command (run in the working directory) and the inputs it needs.
# Only programs of a fresh Debian 12 (coreutils, dash, perl-base, gzip, grep, sed, mawk,
# diffutils, findutils) and of what .ci/setup installs (python3, make). xz (xz-utils) and bzip2
# are not certain to be there: a program that is not installed is left out, with a message.

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega lorem ipsum dolor sit amet").split()


def _text(rng, lines, per_line=8):
    return "".join(" ".join(rng.choice(WORDS) for _ in range(per_line)) + "\n"
                   for _ in range(lines))


def setup_common(d):
    """Fixed inputs, the same bytes on every run (seeded generator)."""
    rng = random.Random(1234)
    with open(os.path.join(d, "small.txt"), "w") as f:   # < 4096 bytes: one pipe write
        f.write(_text(rng, 50, 6))
    with open(os.path.join(d, "old.txt"), "w") as f:
        f.write(_text(rng, 300))
    lines = open(os.path.join(d, "old.txt")).read().splitlines()
    for i in range(0, len(lines), 17):
        lines[i] = lines[i].upper()
    with open(os.path.join(d, "new.txt"), "w") as f:
        f.write("\n".join(lines[5:] + ["an added line"]) + "\n")
    with open(os.path.join(d, "data.csv"), "w") as f:
        for _ in range(2000):
            f.write("%s,%d\n" % (rng.choice(WORDS), rng.randrange(1000)))
    # big.txt: enough for sort --parallel=2 to use both threads (SUBTHREAD_LINES_HEURISTIC is
    # 128Ki lines).
    with open(os.path.join(d, "big.txt"), "w") as f:
        f.write(_text(rng, 300000, 6))  # > 128Ki lines: sort starts a thread only then
    # mid.txt: two 1 MiB blocks for xz -T2, one per thread: with more blocks than threads, how
    # many output buffers xz's queue allocates depends on how far ahead the threads got.
    with open(os.path.join(d, "mid.txt"), "w") as f:
        f.write(_text(rng, 50000, 6))
    tree = os.path.join(d, "tree")
    for i in range(6):
        sub = os.path.join(tree, "dir%d" % i, "sub")
        os.makedirs(sub)
        for j in range(5):
            with open(os.path.join(sub if j % 2 else os.path.dirname(sub), "f%d.txt" % j),
                      "w") as f:
                f.write(_text(rng, 40))
    with open(os.path.join(d, "threads.py"), "w") as f:
        f.write(
            # The file is read before the threads start (three threads opening it at once
            # would get descriptors 3, 4, 5 in whatever order they ran); the barrier keeps all
            # three alive until each has its own malloc arena (a thread starting after another
            # exited would reuse the dead thread's arena instead).
            "import threading, hashlib\n"
            "out = [None] * 3\n"
            "data = open('old.txt', 'rb').read()\n"
            "barrier = threading.Barrier(3)\n"
            "def work(i):\n"
            "    out[i] = hashlib.sha256(data * 20 * (i + 1)).hexdigest()\n"
            "    barrier.wait()\n"
            "ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]\n"
            "for t in ts: t.start()\n"
            "for t in ts: t.join()\n"
            "print('\\n'.join(out))\n")
    with open(os.path.join(d, "spawn.py"), "w") as f:
        f.write(
            "import subprocess, os\n"
            "r = subprocess.run(['wc', '-l', 'old.txt'], stdout=subprocess.PIPE, text=True)\n"
            "print(r.stdout.strip())\n"
            "subprocess.run(['/bin/true'], check=True)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(3)\n"
            "print(os.waitpid(pid, 0)[1] >> 8)\n")
    with open(os.path.join(d, "report.pl"), "w") as f:
        f.write(
            "use strict; use warnings;\n"
            "my %n; open(my $fh, '<', 'data.csv') or die;\n"
            "while (<$fh>) { chomp; my ($k, $v) = split /,/; $n{$k} += $v; }\n"
            "printf \"%s %d\\n\", $_, $n{$_} for sort keys %n;\n")
    with open(os.path.join(d, "Makefile"), "w") as f:
        f.write(
            "all: joined.txt count.txt\n"
            "joined.txt: old.txt new.txt\n"
            "\tcat old.txt new.txt > $@\n"
            "count.txt: joined.txt\n"
            "\twc -l < joined.txt > $@\n"
            "\t@echo done\n")


PYTHON = "/usr/bin/python3"
PROGRAMS = collections.OrderedDict([
    # single process
    ("awk_sum", ["awk", "-F,", "{s[$1]+=$2} END {for (k in s) print k, s[k]}", "data.csv"]),
    ("sed_edit", ["sed", "-E", "-e", "s/(alpha|omega)/<\\1>/g", "-e", "/^lorem/d", "old.txt"]),
    ("grep_recursive", ["grep", "-rn", "-i", "--", "ipsum dolor", "tree"]),
    ("diff_unified", ["diff", "-u", "old.txt", "new.txt"]),
    ("perl_report", ["perl", "report.pl"]),
    ("bzip2_compress", ["bzip2", "-9", "-c", "old.txt"]),
    ("sha256sum_files", ["sha256sum", "old.txt", "new.txt", "data.csv", "small.txt"]),
    # threaded
    ("sort_parallel", ["sort", "--parallel=2", "-S", "64M", "big.txt"]),
    ("xz_threads", ["xz", "-T2", "-0", "--block-size=1MiB", "-c", "mid.txt"]),
    ("python_threads", [PYTHON, "-B", "threads.py"]),
    # forking
    ("sh_pipeline", ["sh", "-c", "gzip -9 -c small.txt | gzip -d -c | tr a-z A-Z | wc -c"]),
    ("sh_sequence", ["sh", "-c", "mkdir out && cp -r tree out/ && du -s out/tree && rm -r out"]),
    ("python_subprocess", [PYTHON, "-B", "spawn.py"]),
    ("make_build", ["make", "-s", "--no-print-directory"]),
])

ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C", "LC_ALL": "C", "TZ": "UTC",
    "TERM": "dumb",
    "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
    "PERL_HASH_SEED": "0", "PERL_PERTURB_KEYS": "0",
    "MAKEFLAGS": "",
}
FIXED_TIME = 1577836800  # 2020-01-01: inputs' atime and mtime

# ------------------------------------------------------------------------------------------
# Normalising

PROCESS_CREATING = ("clone", "clone3", "fork", "vfork")
CALL = re.compile(r"^(?:\[pid\s+\d+\] )?([a-z_0-9]+)\(")
RESULT = re.compile(r"\) += (-?\d+)(?: |$)")

# The places where strace prints a task id. A number there is replaced by the label of the task
# with that id (T0, T0.1, ...) if it is a traced task, else by PID (the tracer's own pid seen
# by getppid, pids of processes outside the trace). Only these places: elsewhere a number
# equal to some tid (a read size, a file size) must stay as it is.
PID_RESULT_CALLS = ("clone", "clone3", "fork", "vfork", "getpid", "gettid", "getppid", "wait4",
                    "waitid", "set_tid_address", "getpgrp", "getpgid", "getsid", "setsid")
PID_FIRST_ARG_CALLS = ("wait4", "kill", "tgkill", "tkill", "getpgid", "setpgid", "getsid",
                       "prlimit64", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
                       "sched_getscheduler", "sched_setscheduler", "pidfd_open",
                       "process_vm_readv", "process_vm_writev", "waitid_P_PID")
PID_SECOND_ARG_CALLS = ("tgkill",)


def join_halves(lines):
    """`call(args <unfinished ...>` + `<... call resumed>rest` -> one line. strace writes the
    halves when another task's event came in between; with -ff each task has its own file, but
    the halves can still be split (signal-interrupted calls, `-ff` on some versions)."""
    out, pending = [], {}
    for line in lines:
        m = re.match(r"^(\[pid\s+\d+\] )?<\.\.\. ([a-z_0-9]+) resumed>(.*)$", line)
        if m and m.group(2) in pending:
            out[pending.pop(m.group(2))] += m.group(3)
            continue
        if line.endswith(" <unfinished ...>"):
            cm = CALL.match(line)
            if cm:
                pending[cm.group(1)] = len(out)
                out.append(line[:-len(" <unfinished ...>")])
                continue
        out.append(line)
    return out


def created_tids(lines, threads=None):
    """The tids of the tasks this task created, in its program order. threads, if given, gets
    the tids of those created with CLONE_THREAD."""
    tids = []
    for line in lines:
        cm = CALL.match(line)
        if cm and cm.group(1) in PROCESS_CREATING:
            rm = RESULT.search(line)
            if rm and int(rm.group(1)) > 0:
                tids.append(int(rm.group(1)))
                if threads is not None and "CLONE_THREAD" in line:
                    threads.add(int(rm.group(1)))
    return tids


def processes_for(files, labels):
    """{tid: label of its process}: a task created with CLONE_THREAD belongs to its creator's
    process (thread group), any other task is a process of its own."""
    threads, parent = set(), {}
    for tid, lines in files.items():
        for kid in created_tids(join_halves(lines), threads):
            parent[kid] = tid
    out = {}
    for tid in files:
        t = tid
        while t in threads and t in parent:
            t = parent[t]
        out[tid] = labels[t]
    return out


def labels_for(files):
    """files: {tid: [lines]} -> {tid: label}, by the process tree (module docstring)."""
    children = {tid: [t for t in created_tids(join_halves(lines)) if t in files]
                for tid, lines in files.items()}
    created = {t for kids in children.values() for t in kids}
    labels = {}
    roots = sorted(t for t in files if t not in created)
    stack = [(t, "T%d" % i) for i, t in enumerate(roots)]
    while stack:
        tid, label = stack.pop()
        labels[tid] = label
        for k, kid in enumerate(children[tid], 1):
            stack.append((kid, "%s.%d" % (label, k)))
    return labels


# strace pads the result to column 40; column alignment is not content. Applied first.
PADDING = re.compile(r"\s+= (?=[-?0-9A-Z])")

# Each rule: (name, pattern, replacement, why it does not hide a tracer difference).
NORMALISE_RULES = [
    ("timestamp", re.compile(r"^(\[pid\s+\d+\] )?\d+(:\d+:\d+)?(\.\d+)? "), r"\1",
     "-t/-tt/-ttt prefixes: wall time of the run (the script passes none; kept for safety)"),
    ("syscall_time", re.compile(r" <\d+\.\d+>$"), "",
     "-T durations: how long the kernel took"),
    ("address", re.compile(r"0x[0-9a-f]{5,}"), "ADDR",
     "ASLR: every run maps stack, heap, libraries and mmap areas elsewhere"),
    ("getrandom", re.compile(r'^getrandom\("(?:\\x[0-9a-f]{2})*"(\.\.\.)?,'),
     r'getrandom("RANDOM"\1,',
     "the bytes the kernel gave are random; the length, flags and result still compared"),
    ("sigchld_times", re.compile(r"si_utime=\d+, si_stime=\d+(?: /\* [0-9.]+ s \*/)?"),
     "si_utime=N, si_stime=N",
     "CPU time the child used, in clock ticks; differs between any two runs"),
    ("proc_pid_path", re.compile(r'"/proc/\d+/'), '"/proc/PID/',
     "a task id inside a path; the task itself is still compared through the other fields"),
    ("maps_text", re.compile(r'(?<=")[0-9a-f]{8,}-[0-9a-f]{8,}(?= )'), "ADDR-ADDR",
     "/proc/self/maps text read by the program: ASLR addresses, as in the address rule"),
    ("statfs_free", re.compile(r"f_bfree=\d+, f_bavail=\d+, (f_files=\d+), f_ffree=\d+"),
     r"f_bfree=N, f_bavail=N, \1, f_ffree=N",
     "free blocks and inodes of the file system: other processes on the machine write to it"),
    ("sysinfo", re.compile(r"^sysinfo\(\{.*\}\) = "), "sysinfo({...}) = ",
     "uptime, load, free memory, process count: the machine's state at that instant"),
]

URANDOM_OPEN = re.compile(r'^openat\(AT_FDCWD, "/dev/u?random", [^)]*\) = (\d+)$')
ARENA_HINTED = re.compile(r"^mmap\(ADDR, 67108864, PROT_NONE, MAP_PRIVATE\|MAP_ANONYMOUS\|"
                          r"MAP_NORESERVE, -1, 0\) = ADDR$")
ARENA_DOUBLE = re.compile(r"^mmap\(NULL, 134217728, PROT_NONE, MAP_PRIVATE\|MAP_ANONYMOUS\|"
                          r"MAP_NORESERVE, -1, 0\) = ADDR$")
ARENA_TRIM = re.compile(r"^munmap\(ADDR, (\d+)\) = 0$")
ARENA_CANON = "ARENA_RESERVE (glibc new_heap: 64 MiB PROT_NONE, 64 MiB-aligned)"
ARENA_FIRST_COMMIT = re.compile(r"^mprotect\(ADDR, (\d+), PROT_READ\|PROT_WRITE\) = 0$")


def collapse_arena_reservations(lines):
    """arena rule. glibc's malloc reserves a 64 MiB-aligned 64 MiB area for a thread's arena
    (new_heap): first at a hint right after the previous one, kept if the kernel put it on a
    64 MiB boundary, else given back; otherwise by reserving 128 MiB and unmapping the part
    outside an aligned 64 MiB window, with one munmap or two whose sizes add up to 64 MiB.
    Which of these paths runs, and the sizes, depend only on where ASLR placed the mappings.
    Each of the sequences becomes the one line ARENA_CANON, with the mprotect that makes the
    arena's first part usable right after it appended (", then mprotect N"); any other mmap or
    munmap, and a sequence whose sizes do not add up, is compared as it is."""
    out, i = [], 0
    while i < len(lines):
        if out and out[-1] == ARENA_CANON and ARENA_FIRST_COMMIT.match(lines[i]):
            out[-1] += ", then mprotect " + ARENA_FIRST_COMMIT.match(lines[i]).group(1)
            i += 1
            continue
        j = i
        if ARENA_HINTED.match(lines[j]):
            if (j + 2 < len(lines) and lines[j + 1] == "munmap(ADDR, 67108864) = 0"
                    and ARENA_DOUBLE.match(lines[j + 2])):
                j += 2          # the hinted area was not aligned: given back, 128 MiB path
            else:
                out.append(ARENA_CANON)
                i = j + 1
                continue
        if ARENA_DOUBLE.match(lines[j]):
            sizes, k = [], j + 1
            while k < len(lines) and len(sizes) < 2 and ARENA_TRIM.match(lines[k]):
                sizes.append(int(ARENA_TRIM.match(lines[k]).group(1)))
                k += 1
                if sum(sizes) == 64 << 20:
                    break
            if sum(sizes) == 64 << 20:
                out.append(ARENA_CANON)
                i = k
                continue
        out.append(lines[i])
        i += 1
    return out


def stateful_rules(lines):
    """Rules that need the lines before, after the others:
    - urandom_read: the bytes read from a descriptor opened on /dev/urandom or /dev/random are
      random (perl seeds from it); the descriptor, length and result are still compared.
    - arena: collapse_arena_reservations."""
    out, random_fds = [], set()
    for line in lines:
        m = URANDOM_OPEN.match(line)
        if m:
            random_fds.add(m.group(1))
        m = re.match(r"^close\((\d+)\) = 0$", line)
        if m:
            random_fds.discard(m.group(1))
        m = re.match(r'^read\((\d+), "(?:[^"\\]|\\.)*"(\.\.\.)?, ', line)
        if m and m.group(1) in random_fds:
            line = 'read(%s, "RANDOM"%s, ' % (m.group(1), m.group(2) or "") + line[m.end():]
        out.append(line)
    return collapse_arena_reservations(out)


def normalise_pids(line, labels):
    def name(num):
        return labels.get(int(num), "PID")

    line = re.sub(r"^\[pid\s+(\d+)\] ", lambda m: "[pid %s] " % name(m.group(1)), line)
    cm = CALL.match(line)
    call = cm.group(1) if cm else None
    if call in PID_RESULT_CALLS:
        line = re.sub(r"\) = (\d+)((?: .*)?)$", lambda m: ") = %s%s" % (name(m.group(1)),
                                                                         m.group(2)), line)
    if call in PID_FIRST_ARG_CALLS:
        line = re.sub(r"^([a-z_0-9]+)\((-?\d+)", lambda m: "%s(%s" % (
            m.group(1), name(m.group(2)) if int(m.group(2)) > 0 else m.group(2)), line)
    if call in PID_SECOND_ARG_CALLS:
        line = re.sub(r"^([a-z_0-9]+)\(([A-Z0-9.?]+|\d+), (\d+)",
                      lambda m: "%s(%s, %s" % (m.group(1), m.group(2), name(m.group(3))), line)
    if call == "waitid":
        line = re.sub(r"^waitid\(P_PID, (\d+)", lambda m: "waitid(P_PID, " + name(m.group(1)),
                      line)
    line = re.sub(r"si_pid=(\d+)", lambda m: "si_pid=" + name(m.group(1)), line)
    line = re.sub(r"parent_tid=\[(\d+)\]", lambda m: "parent_tid=[%s]" % name(m.group(1)), line)
    # rt_sigreturn's result is the interrupted code's rax: when a SIGCHLD handler ran right
    # after wait4 returned, that is the pid of whichever child the kernel reaped first (in a
    # pipeline, whichever exited first: scheduling). TASK says only "a traced task's id"; the
    # wait4 lines themselves still carry the exact label.
    if call == "rt_sigreturn":
        line = re.sub(r"\) = (\d+)$", lambda m: ") = " + ("TASK" if int(m.group(1)) in labels
                                                         else m.group(1)), line)
    # pthread_join waits on the thread's tid word: futex(ADDR, FUTEX_WAIT..., TID, ...)
    if call == "futex":
        line = re.sub(r"^(futex\(0x[0-9a-f]+, FUTEX_WAIT[A-Z_|]*, )(\d+)",
                      lambda m: m.group(1) + (name(m.group(2)) if int(m.group(2)) in labels
                                              else m.group(2)), line)
    return line


def normalise(lines, labels):
    out = []
    for line in join_halves(lines):
        line = PADDING.sub(" = ", line)
        line = normalise_pids(line, labels)
        for _name, pattern, repl, _why in NORMALISE_RULES:
            line = pattern.sub(repl, line)
        out.append(line)
    return stateful_rules(out)


# ------------------------------------------------------------------------------------------
# Lines left out on both sides: their presence or count depends on scheduling in that run, not
# on the tracer. Each with why. Counted and printed (never silently).
# Not compared line by line, but by presence: if a program has lines of a group on one side
# and none on the other, all of them count as differences (a tracer that never shows futex
# calls or signals cannot pass).
TIMING_DEPENDENT = [
    ("futex_wait_wake", re.compile(r"^futex\(ADDR, FUTEX_(WAIT|WAKE)"),
     "whether a thread blocks on a lock or condition variable (and so whether anyone has to "
     "wake it) depends on which thread got there first; the in-process tracer also changes the "
     "threads' relative speed differently than ptrace does"),
    ("arena_creation", re.compile(r"^ARENA_RESERVE "),
     "a thread's first malloc takes the arena of a thread that has exited, if there is one, "
     "else makes a new one (ARENA_RESERVE lines, see collapse_arena_reservations): whether the "
     "previous thread (GNU sort's merge threads, one after another) had exited yet is timing"),
    ("sigchld_coalescing", re.compile(r"^(--- SIGCHLD |rt_sigreturn\()"),
     "a standard signal sent while the same one is still pending is merged into it: how many "
     "SIGCHLD a shell gets for the children of a pipeline (and so how many times its handler "
     "runs and returns) depends on whether they exited while one was pending"),
]


def timing_dependent(line):
    for name, pattern, _why in TIMING_DEPENDENT:
        if pattern.search(line):
            return name
    return None


# ------------------------------------------------------------------------------------------
# Running

def read_files(prefix):
    d, base = os.path.split(prefix)
    files = {}
    for entry in os.listdir(d):
        m = re.fullmatch(re.escape(base) + r"\.(\d+)", entry)
        if m:
            with open(os.path.join(d, entry), errors="replace") as f:
                files[int(m.group(1))] = f.read().splitlines()
    return files


def prepare_workdir(work):
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    setup_common(work)
    for root, dirs, names in os.walk(work, topdown=False):
        for n in names + dirs:
            os.utime(os.path.join(root, n), (FIXED_TIME, FIXED_TIME))
    os.utime(work, (FIXED_TIME, FIXED_TIME))


def run_traced(tracer, cmd, top, side):
    work = os.path.join(top, "work")
    out = os.path.join(top, "out_" + side)
    os.makedirs(out)
    prepare_workdir(work)
    env = dict(ENV, HOME=work, TMPDIR=work)
    with open(os.path.join(top, side + ".stdout"), "wb") as so, \
            open(os.path.join(top, side + ".stderr"), "wb") as se:
        rc = subprocess.call([tracer, "-ff", "-o", os.path.join(out, side), "--"] + cmd,
                             cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=so, stderr=se)
    with open(os.path.join(top, side + ".stderr"), errors="replace") as f:
        err = f.read()
    with open(os.path.join(top, side + ".stdout"), "rb") as f:
        stdout = f.read()
    return rc, err, stdout, read_files(os.path.join(out, side))


class Result:
    def __init__(self, name):
        self.name = name
        self.strace_lines = self.zptrace_lines = self.identical = self.denominator = 0
        self.only = collections.defaultdict(list)  # (kind, side) -> [(label, line)]
        self.timing = collections.Counter()
        self.tasks = []  # (tasks, processes) of strace, of zptrace


def kind_of(line):
    if line.startswith("+++") or line.startswith("---"):
        return line.split()[1] if len(line.split()) > 1 else line
    cm = CALL.match(line)
    return cm.group(1) if cm else line[:30]


def compare(name, s_files, z_files, s_rc, z_rc, s_out, z_out):
    res = Result(name)
    # Lines are compared per process (all the process's threads together): which thread of a
    # process does a piece of work (sort's merge, writing the output) is the scheduler's
    # choice. The tids inside the lines are still each task's own label.
    s_by, z_by = collections.defaultdict(list), collections.defaultdict(list)
    for files, by in ((s_files, s_by), (z_files, z_by)):
        labels = labels_for(files)
        process = processes_for(files, labels)
        for tid, lines in files.items():
            by[process[tid]] += normalise(lines, labels)
        res.tasks.append((len(files), len(by)))
    for label in sorted(set(s_by) | set(z_by)):
        sides = []
        for side, by in (("strace", s_by), ("zptrace", z_by)):
            kept = collections.Counter()
            for line in by.get(label, []):
                t = timing_dependent(line)
                if t:
                    res.timing[(t, side)] += 1
                else:
                    kept[line] += 1
            sides.append(kept)
        s, z = sides
        ns, nz = sum(s.values()), sum(z.values())
        same = sum((s & z).values())
        res.strace_lines += ns
        res.zptrace_lines += nz
        res.identical += same
        res.denominator += max(ns, nz)
        for line, n in (s - z).items():
            res.only[(kind_of(line), "only in strace")] += [(label, line)] * n
        for line, n in (z - s).items():
            res.only[(kind_of(line), "only in zptrace")] += [(label, line)] * n
    for group in {t for t, _ in res.timing}:
        ns, nz = res.timing[(group, "strace")], res.timing[(group, "zptrace")]
        if (ns > 0) != (nz > 0):
            res.strace_lines += ns
            res.zptrace_lines += nz
            res.denominator += max(ns, nz)
            res.only[(group, "only in " + ("strace" if ns else "zptrace"))].append(
                ("all", "%d lines of the timing-dependent group on one side, none on the other"
                 % max(ns, nz)))
    # The traced program's exit status and its standard output: a tracer must not change what
    # the program does. One line each.
    res.strace_lines += 2
    res.zptrace_lines += 2
    res.denominator += 2
    if s_rc == z_rc:
        res.identical += 1
    else:
        res.only[("exit status", "differs")].append(("T0", "strace %d, zptrace %d" % (s_rc, z_rc)))
    if s_out == z_out:
        res.identical += 1
    else:
        res.only[("program stdout", "differs")].append(
            ("T0", "strace %d bytes %r..., zptrace %d bytes %r..." % (
                len(s_out), s_out[:40], len(z_out), z_out[:40])))
    return res


def self_test():
    """The pairing and the rules on made-up lines: what each is meant to do, and not more."""
    parent = [
        "execve(\"/usr/bin/sh\", [\"sh\"], 0x7ffd1234abcd /* 3 vars */) = 0",
        "getpid()                                = 500",
        "clone(child_stack=NULL, flags=SIGCHLD <unfinished ...>",
        "<... clone resumed>)                    = 777",
        "vfork()                                 = 601",
        "clone(child_stack=NULL, flags=SIGCHLD)  = -1 EAGAIN (Resource temporarily unavailable)",
        "wait4(-1, [{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 601",
        "--- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=777, si_uid=0, si_status=0, "
        "si_utime=3, si_stime=1 /* 0.04 s */} ---",
        "rt_sigreturn({mask=[]})                 = 601",
        "read(3, \"abc\", 3)                       = 500",
        "getppid()                               = 42",
        "getrandom(\"\\x01\\xab\", 2, GRND_NONBLOCK) = 2",
        "mmap(NULL, 134217728, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0) = "
        "0x7f0000200000",
        "munmap(0x7f0000200000, 31457280)        = 0",
        "munmap(0x7f0004000000, 35651584)        = 0",
        "mprotect(0x7f0002000000, 135168, PROT_READ|PROT_WRITE) = 0",
        "munmap(0x7f0008000000, 4096)            = 0",
        "mmap(0x7f0008000000, 67108864, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, "
        "0) = 0x7f000c000000",
        "mmap(0x7f0010000000, 67108864, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, "
        "0) = 0x7f0010100000",
        "munmap(0x7f0010100000, 67108864) = 0",
        "mmap(NULL, 134217728, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0) = "
        "0x7f0020000000",
        "munmap(0x7f0024000000, 67108864) = 0",
        "munmap(0x7f0008000000, 4096)            = 0",
        "openat(AT_FDCWD, \"/dev/urandom\", O_RDONLY) = 4",
        "read(4, \"\\377x\", 2)                    = 2",
        "read(5, \"\\377x\", 2)                    = 2",
    ]
    files = {500: parent, 777: ["exit_group(0) = ?", "+++ exited with 0 +++"],
             601: ["gettid() = 601"]}
    labels = labels_for(files)
    assert labels == {500: "T0", 777: "T0.1", 601: "T0.2"}, labels
    got = normalise(parent, labels)
    want = [
        'execve("/usr/bin/sh", ["sh"], ADDR /* 3 vars */) = 0',
        "getpid() = T0",
        "clone(child_stack=NULL, flags=SIGCHLD) = T0.1",
        "vfork() = T0.2",
        "clone(child_stack=NULL, flags=SIGCHLD) = -1 EAGAIN (Resource temporarily unavailable)",
        "wait4(-1, [{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = T0.2",
        "--- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=T0.1, si_uid=0, si_status=0, "
        "si_utime=N, si_stime=N} ---",
        "rt_sigreturn({mask=[]}) = TASK",
        'read(3, "abc", 3) = 500',            # a read size equal to a tid stays a number
        "getppid() = PID",
        'getrandom("RANDOM", 2, GRND_NONBLOCK) = 2',
        ARENA_CANON + ", then mprotect 135168",
        "munmap(ADDR, 4096) = 0",             # not part of the trim: compared as it is
        ARENA_CANON,                          # the hinted form
        ARENA_CANON,                          # hinted, given back, then the 128 MiB form
        "munmap(ADDR, 4096) = 0",
        'openat(AT_FDCWD, "/dev/urandom", O_RDONLY) = 4',
        'read(4, "RANDOM", 2) = 2',
        'read(5, "\\377x", 2) = 2',          # not from /dev/urandom: compared as it is
    ]
    for g, w in zip(got, want):
        assert g == w, "\n got: %s\nwant: %s" % (g, w)
    assert len(got) == len(want), (len(got), len(want))
    print("self test passed")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("zptrace")
    ap.add_argument("--min-percent", type=float, default=97.0)
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--strace", default=shutil.which("strace") or "/usr/bin/strace")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    if not os.access(args.strace, os.X_OK):
        print("strace not found: skipped")
        return 77
    zptrace = os.path.abspath(args.zptrace) if os.sep in args.zptrace else args.zptrace
    names = [n for n in args.programs.split(",") if n]
    for n in names:
        if n not in PROGRAMS:
            print("unknown program %r; known: %s" % (n, ", ".join(PROGRAMS)))
            return 2
    missing = [n for n in names if not shutil.which(PROGRAMS[n][0], path=ENV["PATH"])]
    for n in missing:
        print("%s: %s is not installed, left out" % (n, PROGRAMS[n][0]))
    names = [n for n in names if n not in missing]

    top = tempfile.mkdtemp(prefix="zptrace_fidelity.")
    results = []
    try:
        for n in names:
            d = os.path.join(top, n)
            os.makedirs(d)
            cmd = PROGRAMS[n]
            s_rc, s_err, s_out, s_files = run_traced(args.strace, cmd, d, "s")
            z_rc, z_err, z_out, z_files = run_traced(zptrace, cmd, d, "z")
            if z_rc == 77 or "page 0" in z_err:
                print("zptrace cannot install (page 0 refused?): skipped\n" + z_err.strip())
                return 77
            if not z_files:
                print("%s: zptrace wrote no PREFIX.PID files (exit %d): %s"
                      % (n, z_rc, z_err.strip()[:500]))
            r = compare(n, s_files, z_files, s_rc, z_rc, s_out, z_out)
            results.append(r)
            if args.verbose:
                print("# %s: %s\n#   strace: %d tasks in %d processes, exit %d; "
                      "zptrace: %d tasks in %d processes, exit %d"
                      % ((n, " ".join(cmd)) + r.tasks[0] + (s_rc,) + r.tasks[1] + (z_rc,)))
    finally:
        if args.keep:
            print("kept:", top)
        else:
            shutil.rmtree(top, ignore_errors=True)

    def timing_cell(counter):
        return "%d/%d" % (sum(n for (t, side), n in counter.items() if side == "strace"),
                          sum(n for (t, side), n in counter.items() if side == "zptrace"))

    print("%-18s %8s %8s %9s %8s   %s" % ("program", "strace", "zptrace", "identical", "percent",
                                          "not compared (timing) strace/zptrace"))
    tot = Result("total")
    for r in results:
        pct = 100.0 * r.identical / r.denominator if r.denominator else 100.0
        print("%-18s %8d %8d %9d %7.2f%%   %s" % (r.name, r.strace_lines, r.zptrace_lines,
                                                r.identical, pct, timing_cell(r.timing)))
        tot.strace_lines += r.strace_lines
        tot.zptrace_lines += r.zptrace_lines
        tot.identical += r.identical
        tot.denominator += r.denominator
        tot.timing.update(r.timing)
    total_pct = 100.0 * tot.identical / tot.denominator if tot.denominator else 100.0
    print("%-18s %8d %8d %9d %7.2f%%   %s" % ("TOTAL", tot.strace_lines, tot.zptrace_lines,
                                                tot.identical, total_pct,
                                                timing_cell(tot.timing)))
    print("(percent = identical / sum over paired processes of max(strace lines, zptrace lines); "
          "the exit status and the program's stdout count as one line each)")
    if tot.timing:
        print("left out on both sides as timing dependent (TIMING_DEPENDENT), strace/zptrace: " +
              ", ".join("%s %s" % (t, timing_cell({k: v for k, v in tot.timing.items()
                                                    if k[0] == t}))
                        for t in sorted({t for t, _ in tot.timing})))

    groups = collections.defaultdict(list)
    for r in results:
        for key, items in r.only.items():
            groups[key] += [(r.name,) + it for it in items]
    if groups:
        print("\nDifferences (%d kinds):" % len(groups))
    examples = 1000 if args.verbose else 3
    for (kind, side), items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        progs = collections.Counter(i[0] for i in items)
        print("  %-20s %-16s %5d  (%s)" % (kind, side, len(items),
                                          ", ".join("%s %d" % kv for kv in progs.most_common())))
        for prog, label, line in items[:examples]:
            print("      %s %s: %s" % (prog, label, line[:200]))
    ok = total_pct >= args.min_percent
    print("\n%s: %.2f%% identical, minimum %.2f%%" % ("PASS" if ok else "FAIL", total_pct,
                                                      args.min_percent))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
