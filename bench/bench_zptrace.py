#!/usr/bin/env python3
"""zptrace against strace: wall time of real workloads traced by each, and untraced.

Workloads: find over /usr; tar of /usr/share/doc piped to cat (sh -c, so -f follows three
processes); git status in a large repository (a copy of /usr/share/doc committed into a
temporary repository, made once per run of this script); python3 importing many stdlib modules.

Modes per workload:
  native      CMD
  strace_o    strace  -f -o FILE CMD        zptrace_o   ZPTRACE -f -o FILE CMD
  strace_c    strace  -c -f -o FILE CMD     zptrace_c   ZPTRACE -c -f -o FILE CMD
(FILE in a temporary directory, deleted after each run; the workload's own stdout and stderr go
to /dev/null.) Rounds are interleaved: each round runs every workload in every mode, with the
order of the modes rotated from round to round, so that a slow phase of the machine (other
jobs: it is shared) is spread over all modes. One untimed native run of each workload first
warms the page cache. Reported: median wall time per mode, strace/zptrace for -o and for -c
(above 1: zptrace faster), and each mode against native.

Usage: bench_zptrace.py ZPTRACE_BINARY [--rounds N] [--strace PATH] [--workloads a,b]
Checking the script itself: test/strace_as_zptrace.sh as ZPTRACE_BINARY.
"""
import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PYTHON = "/usr/bin/python3"
IMPORTS = ("argparse asyncio base64 bz2 calendar collections concurrent.futures configparser "
           "contextlib csv dataclasses datetime decimal difflib email.parser fractions ftplib "
           "gettext glob gzip hashlib heapq hmac html.parser http.client http.server imaplib "
           "inspect ipaddress json logging.handlers lzma mailbox multiprocessing pathlib "
           "pickle pkgutil platform plistlib poplib pprint queue random re shelve shutil "
           "smtplib socket socketserver sqlite3 ssl statistics string subprocess tarfile "
           "tempfile textwrap threading timeit tomllib traceback typing unittest urllib.request "
           "uuid wave xml.dom.minidom xml.etree.ElementTree xmlrpc.client zipfile zoneinfo")

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C", "TZ": "UTC", "HOME": "/tmp",
       "PYTHONDONTWRITEBYTECODE": "1", "GIT_CONFIG_NOSYSTEM": "1"}


def cpu_report():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    flags = info.get("flags", "").split()
    print("CPU: %s (family %s, model %s, stepping %s), %d logical CPUs"
          % (info.get("model name", "?"), info.get("cpu family", "?"), info.get("model", "?"),
             info.get("stepping", "?"), os.cpu_count() or 0))
    print("  avx512f: %s, pcid: %s" % ("yes" if "avx512f" in flags else "no",
                                      "yes" if "pcid" in flags else "no"))
    for v in ("meltdown", "spectre_v2"):
        try:
            with open("/sys/devices/system/cpu/vulnerabilities/" + v) as f:
                print("  %s: %s" % (v, f.read().strip()))
        except OSError:
            print("  %s: (not readable)" % v)
    try:
        print("  kernel: " + os.uname().release)
    except OSError:
        pass


def make_git_repo(top):
    """A copy of /usr/share/doc committed into a fresh repository (once per run)."""
    repo = os.path.join(top, "repo")
    shutil.copytree("/usr/share/doc", os.path.join(repo, "doc"), symlinks=True)
    env = dict(ENV, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.org",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.org",
               GIT_AUTHOR_DATE="2020-01-01T00:00:00Z", GIT_COMMITTER_DATE="2020-01-01T00:00:00Z")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "doc"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    nfiles = int(subprocess.run(["git", "ls-files"], cwd=repo, env=env, check=True,
                                capture_output=True, text=True).stdout.count("\n"))
    return repo, nfiles


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("zptrace")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--strace", default=shutil.which("strace") or "/usr/bin/strace")
    ap.add_argument("--workloads", default="find,tar,git_status,python_imports")
    args = ap.parse_args()
    if not os.access(args.strace, os.X_OK):
        print("strace not found: skipped")
        return 77
    zptrace = os.path.abspath(args.zptrace) if os.sep in args.zptrace else args.zptrace

    cpu_report()
    try:
        version = subprocess.run([args.strace, "-V"], capture_output=True, text=True).stdout
        print("strace: %s (%s)" % (args.strace, version.splitlines()[0] if version else "?"))
    except OSError:
        pass
    print("zptrace: %s" % zptrace)
    top = tempfile.mkdtemp(prefix="bench_zptrace.")
    try:
        workloads = {
            "find": ["find", "/usr", "-type", "f"],
            "tar": ["sh", "-c", "tar cf - /usr/share/doc | cat > /dev/null"],
            "python_imports": [PYTHON, "-c", "import " + ", ".join(IMPORTS.split())],
        }
        wanted = [w for w in args.workloads.split(",") if w]
        if "git_status" in wanted:
            t0 = time.perf_counter()
            repo, nfiles = make_git_repo(top)
            print("git repository: %d files (copy of /usr/share/doc), made in %.1f s"
                  % (nfiles, time.perf_counter() - t0))
            workloads["git_status"] = ["git", "-C", repo, "status"]
        workloads = {w: workloads[w] for w in wanted}
        trace_file = os.path.join(top, "trace.out")
        modes = {
            "native": lambda c: c,
            "strace_o": lambda c: [args.strace, "-f", "-o", trace_file, "--"] + c,
            "zptrace_o": lambda c: [zptrace, "-f", "-o", trace_file, "--"] + c,
            "strace_c": lambda c: [args.strace, "-c", "-f", "-o", trace_file, "--"] + c,
            "zptrace_c": lambda c: [zptrace, "-c", "-f", "-o", trace_file, "--"] + c,
        }
        print("\nCommand lines (stdout and stderr to /dev/null; FILE = %s, deleted after each "
              "run):" % trace_file)
        for w, cmd in workloads.items():
            for m, wrap in modes.items():
                print("  %-15s %-9s %s" % (w, m, shlex.join(wrap(cmd))))
        print("\nwarming up (one native run each)...", flush=True)
        for cmd in workloads.values():
            subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        times = {(w, m): [] for w in workloads for m in modes}
        failures = {}
        names = list(modes)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for w, cmd in workloads.items():
                for m in order:
                    argv = modes[m](cmd)
                    t0 = time.perf_counter()
                    p = subprocess.run(argv, env=ENV, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    times[(w, m)].append(time.perf_counter() - t0)
                    if p.returncode != 0:
                        failures[(w, m)] = (p.returncode, p.stderr.decode(errors="replace")[-300:])
                    if os.path.exists(trace_file):
                        os.unlink(trace_file)
            print("round %d/%d done" % (r + 1, args.rounds), flush=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nMedian wall time in seconds over %d rounds (min..max in brackets):" % args.rounds)
    print("%-15s" % "workload" + "".join("%22s" % m for m in modes))
    for w in workloads:
        print("%-15s" % w + "".join("%22s" % ("%.3f [%.3f..%.3f]" % (
            med[(w, m)], min(times[(w, m)]), max(times[(w, m)]))) for m in modes))
    print("\nRatios (strace/zptrace above 1: zptrace faster; x native: slowdown against "
          "untraced):")
    print("%-15s %12s %12s %11s %11s %11s %11s" % ("workload", "strace/zp -o", "strace/zp -c",
                                                    "strace_o", "zptrace_o", "strace_c",
                                                    "zptrace_c"))
    for w in workloads:
        n = med[(w, "native")]
        print("%-15s %12.2f %12.2f %10.2fx %10.2fx %10.2fx %10.2fx" % (
            w, med[(w, "strace_o")] / med[(w, "zptrace_o")],
            med[(w, "strace_c")] / med[(w, "zptrace_c")],
            med[(w, "strace_o")] / n, med[(w, "zptrace_o")] / n,
            med[(w, "strace_c")] / n, med[(w, "zptrace_c")] / n))
    for (w, m), (rc, err) in sorted(failures.items()):
        print("warning: %s %s exited %d: %s" % (w, m, rc, err.strip()))
    if any(m.startswith("zptrace") and (rc == 77 or "page 0" in err)
           for (w, m), (rc, err) in failures.items()):
        print("zptrace cannot install (page 0 refused?): skipped")
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
