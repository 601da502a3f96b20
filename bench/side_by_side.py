#!/usr/bin/python3
"""libzpoline side by side with other system call hooking tools (docs/PERFORMANCE.md, "Side by side
with the field"). Every tool is loaded with LD_PRELOAD into the same unmodified programs, with a
hook that passes every call on to the kernel:

  (a) getpid() through libc, N calls          (build/bench/side_by_side_loop getpid N)
  (b) read() of 1 byte from /dev/zero, N calls (build/bench/side_by_side_loop read N)
  (c) python3 -c pass, start to exit (wall time of the process, and its CPU time)

in interleaved rounds (round r: native, each peer, each libzpoline variant; R rounds), all on one
CPU (the script re-runs itself under `taskset -c CPU`). For each workload and tool it prints the
median over rounds of the ratio to native in the same round, [p25..p75], and the median absolute
figure. Peers are optional; one that is not given is skipped, with a message.

  bench/side_by_side.py [--build DIR] [--zpoline DIR] [--syscall-intercept HOOK.so]
                        [--lazypoline DIR] [--rounds R] [--calls N] [--python-runs P] [--cpu C]

  --zpoline DIR            a build of github.com/yasukata/zpoline: DIR/libzpoline.so, with its
                           built-in pass-through hook (no LIBZPHOOK; --zpoline-hook FILE sets one)
  --syscall-intercept SO   a pass-through hook library linked with libsyscall_intercept
                           (github.com/pmem/syscall_intercept); it is what gets preloaded
  --lazypoline DIR         a build directory of github.com/lazypoline/lazypoline (libbootstrap.so,
                           liblazypoline.so), built with PRINT_SYSCALLS 0
  --build DIR              libzpoline's build directory (default: build)

The same can be given as SIDE_BY_SIDE_ZPOLINE, SIDE_BY_SIDE_SYSCALL_INTERCEPT,
SIDE_BY_SIDE_LAZYPOLINE (not ZPOLINE_*: libzpoline refuses unknown ZPOLINE_* variables).
Needs root: sets vm.mmap_min_addr to 0 for the run (every tool here maps page 0) and puts the
old value back on exit.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

MMAP_MIN_ADDR = "/proc/sys/vm/mmap_min_addr"


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    position = p * (len(values) - 1)
    below = int(position)
    above = min(below + 1, len(values) - 1)
    fraction = position - below
    return values[below] * (1 - fraction) + values[above] * fraction


def read_text(path, default="?"):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def cpuinfo():
    info = {}
    for line in read_text("/proc/cpuinfo", "").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info.setdefault(key.strip(), value.strip())
    return info


def machine_lines(cpu):
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    vulnerabilities = "/sys/devices/system/cpu/vulnerabilities"
    uname = os.uname()
    return [
        "CPU: %s (family %s model %s stepping %s), %d CPUs online; AVX-512: %s; PCID: %s"
        % (info.get("model name", "?"), info.get("cpu family", "?"), info.get("model", "?"),
           info.get("stepping", "?"), os.cpu_count() or 0,
           "yes" if "avx512f" in flags else "no", "yes" if "pcid" in flags else "no"),
        "meltdown: " + read_text(os.path.join(vulnerabilities, "meltdown")),
        "spectre_v2: " + read_text(os.path.join(vulnerabilities, "spectre_v2")),
        "kernel: %s %s; load average: %s; pinned to CPU %d"
        % (uname.release, uname.machine, " ".join(read_text("/proc/loadavg").split()[:3]), cpu),
    ]


class Tool:
    def __init__(self, name, env, note):
        self.name = name
        self.env = env  # variables added to a clean environment
        self.note = note


def tools_from(args):
    """The tools to compare, in round order: native first, then the peers, then libzpoline."""
    tools = [Tool("native", {}, "no LD_PRELOAD")]
    skipped = []

    zpoline = args.zpoline or os.environ.get("SIDE_BY_SIDE_ZPOLINE")
    if zpoline:
        library = os.path.join(os.path.abspath(zpoline), "libzpoline.so")
        if os.path.isfile(library):
            env = {"LD_PRELOAD": library}
            note = "built-in pass-through hook"
            if args.zpoline_hook:
                env["LIBZPHOOK"] = os.path.abspath(args.zpoline_hook)
                note = "LIBZPHOOK=" + env["LIBZPHOOK"]
            tools.append(Tool("zpoline", env, note))
        else:
            skipped.append("zpoline: no %s" % library)
    else:
        skipped.append("zpoline: not given (--zpoline DIR)")

    hook = args.syscall_intercept or os.environ.get("SIDE_BY_SIDE_SYSCALL_INTERCEPT")
    if hook:
        hook = os.path.abspath(hook)
        if os.path.isfile(hook):
            tools.append(Tool("syscall_intercept", {"LD_PRELOAD": hook},
                              "hook returns 1 (not handled)"))
        else:
            skipped.append("syscall_intercept: no %s" % hook)
    else:
        skipped.append("syscall_intercept: not given (--syscall-intercept HOOK.so)")

    lazypoline = args.lazypoline or os.environ.get("SIDE_BY_SIDE_LAZYPOLINE")
    if lazypoline:
        directory = os.path.abspath(lazypoline)
        bootstrap = os.path.join(directory, "libbootstrap.so")
        library = os.path.join(directory, "liblazypoline.so")
        if os.path.isfile(bootstrap) and os.path.isfile(library):
            tools.append(Tool("lazypoline", {"LD_PRELOAD": bootstrap, "LIBLAZYPOLINE": library},
                              "syscall_emulate passes through (PRINT_SYSCALLS 0)"))
        else:
            skipped.append("lazypoline: no %s or %s" % (bootstrap, library))
    else:
        skipped.append("lazypoline: not given (--lazypoline DIR)")

    build = os.path.abspath(args.build)
    shim = os.path.join(build, "bench", "libside-by-side-preload.so")
    if os.path.isfile(shim):
        tools.append(Tool("libzpoline", {"LD_PRELOAD": shim},
                          "in-process pass-through hook, full contract"))
        tools.append(Tool("libzpoline gpr-only",
                          {"LD_PRELOAD": shim, "SIDE_BY_SIDE_GENERAL_REGISTERS_ONLY": "1"},
                          "the same, Options::general_registers_only"))
    else:
        skipped.append("libzpoline: no %s (build with benchmarks on)" % shim)
    preload = os.path.join(build, "examples", "preload", "libzpoline-preload.so")
    hook_library = os.path.join(build, "bench", "libside-by-side-hook.so")
    if os.path.isfile(preload) and os.path.isfile(hook_library):
        tools.append(Tool("libzpoline-preload", {"LD_PRELOAD": preload, "ZPOLINE_HOOK": hook_library},
                          "shipped shim + pass-through hook library (dlmopen)"))
    else:
        skipped.append("libzpoline-preload: no %s or %s" % (preload, hook_library))
    return tools, skipped


def clean_environment(extra):
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ZPOLINE_") or k.startswith("SIDE_BY_SIDE_")
                   or k in ("LD_PRELOAD", "LIBZPHOOK", "LIBLAZYPOLINE")
                   or k.startswith("INTERCEPT_"))}
    env.update(extra)
    return env


def run_loop(loop, tool, which, calls):
    """ns per call (thread CPU time, wall time) of one run of the loop program."""
    result = subprocess.run([loop, which, str(calls)], env=clean_environment(tool.env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError("%s: %s %s exited with %d: %s"
                           % (tool.name, loop, which, result.returncode, result.stderr.strip()))
    cpu, wall = result.stdout.split()
    return float(cpu), float(wall)


def run_python(tool, runs):
    """Median over `runs` starts of python3 -c pass: (wall ms, CPU ms of the child)."""
    env = clean_environment(tool.env)
    walls, cpus = [], []
    for _ in range(runs):
        start = time.perf_counter()
        pid = os.posix_spawn("/usr/bin/python3", ["python3", "-c", "pass"], env,
                             file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                                           (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
        _, status, usage = os.wait4(pid, 0)
        walls.append((time.perf_counter() - start) * 1e3)
        if status != 0:
            raise RuntimeError("%s: python3 -c pass ended with status %d" % (tool.name, status))
        cpus.append((usage.ru_utime + usage.ru_stime) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--zpoline")
    parser.add_argument("--zpoline-hook")
    parser.add_argument("--syscall-intercept")
    parser.add_argument("--lazypoline")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--calls", type=int, default=200000)
    parser.add_argument("--python-runs", type=int, default=15)
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1)
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not args.pinned:  # run again under taskset: every child inherits the one CPU
        os.execvp("taskset", ["taskset", "-c", str(args.cpu), sys.executable,
                              os.path.abspath(__file__), "--pinned"] + sys.argv[1:])

    loop = os.path.join(os.path.abspath(args.build), "bench", "side_by_side_loop")
    if not os.path.isfile(loop):
        sys.exit("side_by_side: no %s; build libzpoline first (meson setup build && ninja -C build)"
                 % loop)
    tools, skipped = tools_from(args)

    print("==== side by side: %d rounds; getpid and read: %d calls per run; python3 -c pass: "
          "median of %d starts per round" % (args.rounds, args.calls, args.python_runs))
    for line in machine_lines(args.cpu):
        print(line)
    for line in skipped:
        print("skipped: " + line)
    for tool in tools:
        print("%-20s %s" % (tool.name, tool.note))
    sys.stdout.flush()

    old_min_addr = read_text(MMAP_MIN_ADDR)
    restore = lambda: None  # noqa: E731
    if old_min_addr != "0":
        try:
            with open(MMAP_MIN_ADDR, "w") as f:
                f.write("0")
        except OSError as error:
            sys.exit("side_by_side: cannot set vm.mmap_min_addr to 0 (%s); run as root" % error)

        def restore():
            with open(MMAP_MIN_ADDR, "w") as f:
                f.write(old_min_addr)
            print("vm.mmap_min_addr restored to %s" % old_min_addr)

    def interrupted(number, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    workloads = [("getpid", "ns"), ("getpid (wall)", "ns"), ("read 1 byte", "ns"),
                 ("python3 -c pass (wall)", "ms"), ("python3 -c pass (CPU)", "ms")]
    # results[workload][tool] = one value per round
    results = {w: {t.name: [] for t in tools} for w, _ in workloads}
    try:
        # A first run of each, not measured: fails early if a tool does not work here.
        for tool in tools:
            run_loop(loop, tool, "getpid", 1000)
            run_python(tool, 1)
        for round_index in range(args.rounds):
            for tool in tools:
                cpu, wall = run_loop(loop, tool, "getpid", args.calls)
                results["getpid"][tool.name].append(cpu)
                results["getpid (wall)"][tool.name].append(wall)
                cpu, _ = run_loop(loop, tool, "read", args.calls)
                results["read 1 byte"][tool.name].append(cpu)
                wall, cpu = run_python(tool, args.python_runs)
                results["python3 -c pass (wall)"][tool.name].append(wall)
                results["python3 -c pass (CPU)"][tool.name].append(cpu)
            print("round %d of %d done" % (round_index + 1, args.rounds), file=sys.stderr)
    finally:
        restore()

    print()
    print("%-24s %-20s %-26s %s" % ("workload", "tool", "ratio to native [p25..p75]", "median"))
    for workload, unit in workloads:
        native = results[workload]["native"]
        for tool in tools:
            values = results[workload][tool.name]
            ratios = [v / n for v, n in zip(values, native)]
            spread = "%5.2fx [%4.2f..%4.2f]" % (statistics.median(ratios),
                                               percentile(ratios, 0.25), percentile(ratios, 0.75))
            print("%-24s %-20s %-26s %8.2f %s"
                  % (workload, tool.name, spread, statistics.median(values), unit))
        print()
    print("getpid and read: thread CPU time per call; python3: median of %d starts per round, "
          "wall time (spawn to exit, as the parent sees it) and the child's user+system CPU time."
          % args.python_runs)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("side_by_side: interrupted")
