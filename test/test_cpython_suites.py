#!/usr/bin/env python3
"""CPython's own test suites for the calls a hook is most likely to break (test_subprocess,
test_signal, test_threading, test_os, test_posix), run under the preload shim with a hook library
that allocates on every call, in a process that cannot map page 0: so every install takes the
near mechanism (the shim stops a program whose install fails, with exit status 127).

    test_cpython_suites.py SHIM HOOK_LIBRARY (nobody | without_cap_sys_rawio)

nobody: the suites run as the user nobody (setpriv --reuid); without_cap_sys_rawio: as root
with CAP_SYS_RAWIO dropped from the bounding and inheritable sets (so from every program run).
Needs Debian's libpython3.11-testsuite (exit 77, skipped, without it).
"""
import os
import shutil
import subprocess
import sys
import tempfile

SUITES = ["test_subprocess", "test_signal", "test_threading", "test_os", "test_posix"]
PYTHON = "/usr/bin/python3"

PAGE_ZERO_PROBE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
address = libc.mmap(None, 4096, 1, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
print("page 0:", "refused" if address in (None, 2**64 - 1) else "mapped")
"""


def main():
    shim, hook, privilege = sys.argv[1:4]
    if not os.path.exists("/usr/lib/python3.11/test/test_subprocess.py"):
        print("SKIP: CPython's test suite is not installed (apt install libpython3.11-testsuite)")
        return 77
    if os.geteuid() != 0:
        print("SKIP: needs root, to drop privileges for real")
        return 77
    if privilege == "nobody":
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    else:
        drop = ["setpriv", "--inh-caps=-sys_rawio", "--bounding-set=-sys_rawio", "--"]
    work = tempfile.mkdtemp(prefix="zpoline-cpython-")
    os.chmod(work, 0o777)
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "TMPDIR": work,
               "LC_ALL": "C.UTF-8"}
        probe = subprocess.run(drop + [PYTHON, "-c", PAGE_ZERO_PROBE], env=env, cwd=work,
                               capture_output=True, text=True, timeout=60)
        print(probe.stdout.strip(), probe.stderr.strip())
        if "page 0: refused" not in probe.stdout:
            print("SKIP: page 0 is not refused to this process (vm.mmap_min_addr is 0?)")
            return 77
        hooked_env = dict(env, LD_PRELOAD=shim, ZPOLINE_HOOK=hook)
        command = drop + [PYTHON, "-m", "test", "-j2", "--timeout=300"] + SUITES
        print("running:", " ".join(command), "with LD_PRELOAD and ZPOLINE_HOOK set")
        run = subprocess.run(command, env=hooked_env, cwd=work, capture_output=True, text=True,
                             timeout=1200)
        print("\n".join(run.stdout.splitlines()[-15:]))
        if run.returncode != 0 or "Tests result: SUCCESS" not in run.stdout:
            print(run.stderr[-4000:])
            print(f"FAIL: the suites did not pass hooked (exit status {run.returncode})")
            return 1
        print(f"ok: {', '.join(SUITES)} pass under the shim ({privilege}, near mechanism)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
