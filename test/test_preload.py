"""libzpoline-preload.so and the example hook libraries on unmodified Debian programs.

    test_preload.py PRELOAD TRACE_HOOK SANDBOX_HOOK FAULT_HOOK WRONG_ABI_HOOK REPLACED_GETENV CASE

Each case runs programs unhooked and hooked (LD_PRELOAD, ZPOLINE_HOOK) and compares what they
print, then checks the hook's effect. Exit status 77 (skipped) if page 0 cannot be mapped.
"""
import os
import re
import subprocess
import sys
import tempfile

PRELOAD, TRACE, SANDBOX, FAULT, WRONG_ABI, REPLACED_GETENV, CASE = sys.argv[1:8]
PYTHON = "/usr/bin/python3"


def asan_runtime(library):
    """The AddressSanitizer runtime `library` needs (in a build with b_sanitize=address), or None.

    ASan must be the first library of a process (it checks, and refuses to start otherwise), so
    it goes into LD_PRELOAD before the preload library. The programs run here (ls, sh, CPython)
    are not LeakSanitizer-clean, and none of them is ours: leak detection is off for them.
    """
    ldd = subprocess.run(["ldd", library], capture_output=True, text=True).stdout
    match = re.search(r"^\s*libasan\.so\S* => (\S+)", ldd, re.M)
    return match.group(1) if match else None


ASAN_RUNTIME = asan_runtime(PRELOAD)

PYTHON_WORKLOAD = r"""
import subprocess, threading
results = [None] * 4
def work(i):
    with open("/etc/passwd") as f:
        results[i] = len(f.read().splitlines())
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("threads", results)
print("child", subprocess.run(["cat", "/etc/hostname"], capture_output=True, text=True).stdout.strip())
print("pipeline", subprocess.run("ls /etc | sort | head -3", shell=True, capture_output=True, text=True).stdout.split())
"""


def run(argv, hooks=None, extra_env=None, cwd="/", allocator=None):
    """Runs argv, hooked if hooks is a list (empty: the shim's counting hook), with an allocator
    library preloaded after the shim if one is given (hooked or not)."""
    # ZPOLINE_MECHANISM stays: the near/preload/* tests run every case with the near mechanism.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ZPOLINE") or k == "ZPOLINE_MECHANISM"}
    env.pop("LD_PRELOAD", None)
    env["LC_ALL"] = "C"
    preloads = [allocator] if allocator else []
    if hooks is not None:
        preloads.insert(0, PRELOAD)
        if ASAN_RUNTIME:
            preloads.insert(0, ASAN_RUNTIME)
            env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"),
                                                         "detect_leaks=0"]))
        if hooks:
            env["ZPOLINE_HOOK"] = ":".join(hooks)
    if preloads:
        env["LD_PRELOAD"] = ":".join(preloads)
    env.update(extra_env or {})
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    if "page 0" in result.stderr and result.returncode == 127:
        print("SKIP: page 0 refused:", result.stderr)
        sys.exit(77)
    return result


def check(condition, message, *details):
    if not condition:
        print("FAIL:", message)
        for detail in details:
            print("----\n" + str(detail)[:4000])
        sys.exit(1)
    print("ok:", message)


def same_as_unhooked(argv, hooks, extra_env=None, allocator=None):
    plain = run(argv, allocator=allocator)
    hooked = run(argv, hooks, extra_env, allocator=allocator)
    check(hooked.returncode == plain.returncode and hooked.stdout == plain.stdout,
          f"{' '.join(argv)} prints the same hooked and unhooked",
          f"unhooked: exit status {plain.returncode}", plain.stdout, plain.stderr,
          f"hooked: exit status {hooked.returncode}", hooked.stdout, hooked.stderr)
    return hooked


def traced(argv, extra_hooks=(), extra_env=None, allocator=None):
    with tempfile.NamedTemporaryFile("r", prefix="zpoline-trace-") as output:
        env = {"ZPOLINE_HOOK_TRACE_OUTPUT": output.name}
        env.update(extra_env or {})
        hooked = same_as_unhooked(argv, [TRACE, *extra_hooks], env, allocator)
        return hooked, output.read()


def pids(trace):
    return set(re.findall(r"^\[pid (\d+)\] ", trace, re.M))


def default_counting_hook_on_ls():
    hooked = same_as_unhooked(["ls", "-l", "/etc"], [])
    match = re.search(r"zpoline: pid \d+: (\d+) system calls:.* getdents64=\d+", hooked.stderr)
    check(match and int(match.group(1)) > 20, "the default hook counts ls's system calls",
          hooked.stderr)


def trace_ls():
    _, trace = traced(["ls", "-l", "/etc"])
    check('openat(AT_FDCWD, "/etc", O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY) = ' in trace,
          "the trace shows ls opening /etc", trace)
    check(re.search(r"getdents64\(\d+, .*\) = \d+", trace), "and reading it", trace)
    check(re.search(r"exit_group\(0\) = \?", trace), "and exiting", trace)


def trace_sh_pipeline():
    _, trace = traced(["sh", "-c", "cat /etc/passwd | sort | head -3; echo done"])
    check(len(pids(trace)) >= 4, "every process of the pipeline is traced (exec keeps it)", trace)
    check('execve("/usr/bin/sort", ["sort"]' in trace, "the exec of sort is traced", trace)
    check(re.search(r'openat\(AT_FDCWD, "/etc/passwd", O_RDONLY\) = \d+', trace),
          "cat opening /etc/passwd is traced", trace)


def trace_python_threads_and_subprocess():
    hooked, trace = traced([PYTHON, "-c", PYTHON_WORKLOAD])
    check("threads [" in hooked.stdout and "child " in hooked.stdout, "python ran", hooked.stdout)
    check(len(pids(trace)) >= 4, "python, cat and the shell pipeline are traced", trace)
    python_pid = sorted(pids(trace), key=int)[0]
    opens = re.findall(rf'^\[pid {python_pid}\] openat\(AT_FDCWD, "/etc/passwd".*\) = \d+', trace,
                       re.M)
    check(len(opens) == 4, "the four threads' opens are traced", "\n".join(opens))
    check(re.search(r'^\[pid \d+\] openat\(AT_FDCWD, "/etc/hostname", O_RDONLY\) = \d+', trace, re.M),
          "the child's open is traced", trace)


def sandbox_cat_ls_python():
    env = {"ZPOLINE_HOOK_SANDBOX_DENY": "/etc/hostname:/root"}
    cat = run(["cat", "/etc/hostname"], [SANDBOX], env)
    check(cat.returncode == 1 and "cat: /etc/hostname: Permission denied" in cat.stderr,
          "cat of a denied file gets EACCES", cat.stderr)
    relative = run(["cat", "./hostname"], [SANDBOX], env, cwd="/etc")
    check(relative.returncode == 1 and "Permission denied" in relative.stderr,
          "a relative path to it too", relative.stderr)
    same_as_unhooked(["ls", "/etc"], [SANDBOX], env)
    same_as_unhooked(["sh", "-c", "cat /etc/passwd | wc -l"], [SANDBOX], env)
    script = ("import os, errno\n"
              "try: open('/root/.profile')\n"
              "except OSError as e: print('denied', e.errno == errno.EACCES)\n"
              "print(len(open('/etc/passwd').read()) > 0)\n"
              "import subprocess\n"
              "print(subprocess.run(['cat', '/etc/hostname'], capture_output=True).returncode)\n")
    python = run([PYTHON, "-c", script], [SANDBOX], env)
    check(python.stdout.split() == ["denied", "True", "True", "1"],
          "python is denied /root, allowed /etc/passwd, and its child is denied too",
          python.stdout, python.stderr)


def fault_sh_and_python():
    env = {"ZPOLINE_HOOK_FAULT": "chdir:3:EACCES"}
    sh = run(["sh", "-c", "for i in 1 2 3 4 5; do cd / && echo $i; done"], [FAULT], env)
    check(sh.stdout.split() == ["1", "2", "4", "5"] and "can't cd" in sh.stderr,
          "the third cd of sh fails, the others do not", sh.stdout, sh.stderr)
    script = ("import os\n"
              "for i in range(5):\n"
              "    try: os.chdir('/'); print(i, 'ok')\n"
              "    except OSError as e: print(i, os.strerror(e.errno))\n")
    python = run([PYTHON, "-c", script], [FAULT], {"ZPOLINE_HOOK_FAULT": "chdir:2:EIO"})
    check(python.stdout.splitlines() == ["0 ok", "1 Input/output error", "2 ok", "3 ok", "4 ok"],
          "python's second chdir fails with EIO, only that one", python.stdout, python.stderr)


def composed_trace_and_fault():
    argv = ["sh", "-c", "cd /; cd /; cd /; echo end"]
    with tempfile.NamedTemporaryFile("r", prefix="zpoline-trace-") as output:
        env = {"ZPOLINE_HOOK_TRACE_OUTPUT": output.name, "ZPOLINE_HOOK_FAULT": "chdir:2:ENOENT"}
        hooked = run(argv, [TRACE, FAULT], env)
        trace = output.read()
    check(hooked.stdout == "end\n", "sh ran", hooked.stdout, hooked.stderr)
    chdirs = re.findall(r'chdir\("/"\) = .*', trace)
    check(chdirs == ['chdir("/") = 0', 'chdir("/") = -1 ENOENT (No such file or directory)',
                     'chdir("/") = 0'],
          "the tracer (first) sees the fault injector's (second) result on the second call only",
          trace)


def errors_stop_the_program():
    cases = [
        ([TRACE.replace("trace", "missing")], {}, "no such file"),
        (["/lib/x86_64-linux-gnu/libm.so.6"], {}, "not a hook library"),
        ([WRONG_ABI], {}, "built for hook ABI version 999"),
        (["/etc/passwd"], {}, "dlmopen failed: /etc/passwd: invalid ELF header"),
        ([FAULT], {}, "refused to start: set ZPOLINE_HOOK_FAULT"),
        ([TRACE, ""], {}, "is empty"),
    ]
    for hooks, env, message in cases:
        result = run(["cat", "/etc/hostname"], hooks, env)
        check(result.returncode == 127 and result.stdout == "" and
              result.stderr.startswith("libzpoline-preload: zpoline: ") and message in result.stderr,
              f"ZPOLINE_HOOK={':'.join(hooks)}: {message}", result.stderr)


def variables_read_when_the_program_replaces_getenv():
    # The program's getenv finds nothing; the library reads environ itself.
    _, trace = traced([REPLACED_GETENV])
    check(re.search(r'chdir\("/"\) = 0', trace), "ZPOLINE_HOOK is read: the tracer ran", trace)
    missing = run([REPLACED_GETENV], [TRACE.replace("trace", "missing")])
    check(missing.returncode == 127 and "no such file" in missing.stderr,
          "a missing hook library named in ZPOLINE_HOOK stops the program", missing.stderr)
    bad_mode = run([REPLACED_GETENV], [TRACE], {"ZPOLINE_MODE": "eagre"})
    check(bad_mode.returncode == 127 and "is not a mode" in bad_mode.stderr,
          "ZPOLINE_MODE is read", bad_mode.stderr)


# A workload for the allocator: threads allocating and freeing blocks of many sizes, large ones
# (mapped by the allocator) among them, and SQLite (which allocates through malloc).
ALLOCATING_WORKLOAD = r"""
import sqlite3, threading
results = [None] * 4
def work(i):
    blocks = []
    for n in range(4000):
        blocks.append(bytearray(1000 + (n * 7919 + i) % 300000))
        if len(blocks) > 64: blocks.pop((n * 31) % len(blocks))
    large = [bytearray(8 << 20) for _ in range(6)]
    db = sqlite3.connect(":memory:")
    db.execute("create table t(a, b)")
    db.executemany("insert into t values (?, ?)", ((k, "x" * (k % 300)) for k in range(20000)))
    results[i] = db.execute("select count(*), sum(length(b)) from t").fetchone()
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(results)
"""

ALLOCATOR_DIRECTORIES = ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64",
                         "/usr/lib", "/usr/local/lib"]


def allocator_or_skip(file_name, package):
    for directory in ALLOCATOR_DIRECTORIES:
        path = os.path.join(directory, file_name)
        if os.path.exists(path):
            return path
    print(f"SKIP: {file_name} is not installed (Debian: apt-get install {package})")
    sys.exit(77)


def trace_under_allocator(file_name, package):
    # The hook library allocates for every call (the line it prints), with the private libc's
    # malloc of its namespace, never the preloaded allocator, whatever that allocator holds.
    allocator = allocator_or_skip(file_name, package)
    for mode in ["eager", "exhaustive", "lazy"]:
        hooked, trace = traced([PYTHON, "-c", ALLOCATING_WORKLOAD], extra_env={"ZPOLINE_MODE": mode},
                               allocator=allocator)
        check(hooked.stdout.count("(20000, 2980000)") == 4,
              f"{mode}: python's threads allocated and finished", hooked.stdout, hooked.stderr)
        check(len(re.findall(r"^\[pid \d+\] mmap\(", trace, re.M)) > 10,
              f"{mode}: the allocator's mmap calls are traced", trace[-4000:])
    # bash replaces getenv; with an allocator whose start-up calls setenv, bash's finds nothing
    # before main. The hook library is loaded all the same (not the shim's counting hook).
    hooked, trace = traced(["bash", "-c", "cd /; cd /; echo done"], allocator=allocator)
    check(hooked.stdout == "done\n" and "system calls:" not in hooked.stderr,
          "bash: ZPOLINE_HOOK is used, not the counting hook", hooked.stdout, hooked.stderr)
    check(len(re.findall(r'chdir\("/"\) = 0', trace)) == 2, "bash's chdir calls are traced",
          trace)


def trace_under_tcmalloc():
    trace_under_allocator("libtcmalloc.so.4", "libgoogle-perftools4")


def trace_under_tcmalloc_minimal():
    trace_under_allocator("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4")


def trace_under_jemalloc():
    trace_under_allocator("libjemalloc.so.2", "libjemalloc2")


MAPS_BELOW_1_GIB = r"""
for line in open("/proc/self/maps"):
    fields = line.split()
    low, high = (int(x, 16) for x in fields[0].split("-"))
    if high <= 1 << 30:
        print(hex(low), hex(high), fields[1], fields[5] if len(fields) > 5 else "")
"""


def hooked_again_after_dropping_privileges():
    # A root process (page 0 allowed) that execs a program as the user nobody, as su, runuser or
    # a server's workers do: the program cannot have page 0, and the shim installs the near
    # mechanism there (it used to stop with exit status 127). The trace file is shared by both.
    script = ("import subprocess, os; "
              "r = subprocess.run(['cat', '/etc/hostname'], user=65534, group=65534, "
              "extra_groups=[], capture_output=True, text=True); "
              "print('child', r.returncode, r.stdout.strip()); "
              "r = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', "
              "'--clear-groups', '--', 'sh', '-c', 'id -u; cat /etc/hostname'], "
              "capture_output=True, text=True); "
              "print('setpriv', r.returncode, r.stdout.split())")
    if os.geteuid() != 0:
        print("SKIP: needs root, to drop privileges")
        sys.exit(77)
    with tempfile.NamedTemporaryFile("r", prefix="zpoline-trace-") as output:
        os.chmod(output.name, 0o666)
        hooked = run([PYTHON, "-c", script], [TRACE],
                     {"ZPOLINE_HOOK_TRACE_OUTPUT": output.name})
        trace = output.read()
    check(hooked.returncode == 0, "python3 ran its children as nobody under the shim",
          hooked.stdout, hooked.stderr)
    hostname = open("/etc/hostname").read().strip()
    check(f"child 0 {hostname}" in hooked.stdout, "subprocess.run(user=65534) ran cat",
          hooked.stdout, hooked.stderr)
    check(f"setpriv 0 ['65534', '{hostname}']" in hooked.stdout.replace('"', "'"),
          "setpriv ran sh and cat as nobody", hooked.stdout, hooked.stderr)
    opens = re.findall(r'^\[pid (\d+)\] openat\(AT_FDCWD, "/etc/hostname", O_RDONLY\) = \d+',
                       trace, re.M)
    check(len(set(opens)) == 2, "both cats, running as nobody, were traced", trace[-3000:])


def non_pie_program_whose_heap_covers_the_old_relay_address():
    # Debian's python3 is not position-independent: its heap (brk) starts after the executable,
    # anywhere in the first GiB with randomisation, right after it without (setarch -R). With
    # glibc asked to grow the heap by 256 MiB at its first malloc, the heap covers 0x06060000,
    # where the relay used to be fixed: the shim failed to start such a program (exit 127, 1 in 90
    # runs of python3 under tcmalloc_minimal with randomisation; every run here).
    with open(PYTHON, "rb") as executable:
        header = executable.read(18)
    if header[16] != 2:  # e_type ET_EXEC
        print("SKIP:", PYTHON, "is position-independent here; its heap is not in the first GiB")
        sys.exit(77)
    if ASAN_RUNTIME:
        print("SKIP: AddressSanitizer's malloc, preloaded first here, does not use the brk heap")
        sys.exit(77)
    hooked = run(["setarch", "-R", PYTHON, "-c", MAPS_BELOW_1_GIB], [],
                 extra_env={"MALLOC_TOP_PAD_": str(256 << 20)})
    check(hooked.returncode == 0, "python3 with a 256 MiB heap from its first malloc runs hooked",
          hooked.stdout, hooked.stderr)
    check("system calls:" in hooked.stderr, "its calls reached the hook", hooked.stderr)
    regions = [line.split() for line in hooked.stdout.splitlines()]
    heap = [(int(r[0], 16), int(r[1], 16)) for r in regions if r[-1] == "[heap]"]
    check(heap and heap[0][0] <= 0x06060000 < heap[0][1], "its heap covers 0x06060000",
          hooked.stdout)
    # Anonymous and executable (execute-only with protection keys, read+execute without).
    relay = [r for r in regions if len(r) == 3 and r[2] in ("--xp", "r-xp") and int(r[0], 16) != 0]
    check(len(relay) == 1 and int(relay[0][1], 16) - int(relay[0][0], 16) == 8192
          and int(relay[0][0], 16) >= heap[0][1], "the relay's two pages lie above the heap",
          hooked.stdout)


globals()[CASE]()
