# Starting programs: subprocess.run with captured output (Python 3.11's _posixsubprocess uses
# vfork when it can), a second Python interpreter, shell pipelines and exit codes, Popen with
# pipes both ways, and os.posix_spawn. Prints outputs and return codes.
import os
import subprocess
import sys

PYTHON = "/usr/bin/python3"  # not sys.executable: in this embedded host that is the host itself


def show(label, result):
    print(f"{label}: rc={result.returncode} out={result.stdout!r} err={result.stderr!r}")


def main():
    print("subprocess has _USE_VFORK:", hasattr(subprocess, "_USE_VFORK"))

    show("echo", subprocess.run(["/bin/echo", "hello", "from", "echo"], capture_output=True))
    show("true", subprocess.run(["/bin/true"], capture_output=True))
    show("false", subprocess.run(["/bin/false"], capture_output=True))
    show("python -c", subprocess.run(
        [PYTHON, "-c", "import sys; print(sum(range(101))); sys.stderr.write('e\\n'); sys.exit(3)"],
        capture_output=True, text=True))
    show("sh pipeline", subprocess.run(
        ["/bin/sh", "-c", "seq 1 1000 | sort -rn | head -n 3; exit 7"], capture_output=True))
    show("sh pipefail-ish", subprocess.run(
        ["/bin/sh", "-c", "printf 'b\\na\\nc\\n' | sort | tr a-z A-Z >&2; kill -TERM $$"],
        capture_output=True))
    show("env", subprocess.run(["/usr/bin/env"], env={"ZP_ONLY": "1"}, capture_output=True))
    show("cwd", subprocess.run(["/bin/pwd"], cwd="/usr/lib", capture_output=True))
    try:
        subprocess.run(["/nonexistent/program"], capture_output=True)
    except FileNotFoundError as error:
        print("missing program:", type(error).__name__, error.errno)
    r = subprocess.run(["/bin/sh", "-c", "exit 42"])
    print("check_returncode:", r.returncode)
    try:
        subprocess.run(["/bin/sh", "-c", "exit 5"], check=True)
    except subprocess.CalledProcessError as error:
        print("CalledProcessError:", error.returncode)
    print("check_output:", subprocess.check_output(["/bin/echo", "-n", "xyz"]))

    # Popen with stdin and stdout pipes: stream data through sort and through wc.
    lines = "".join(f"line {n:04d}\n" for n in range(2000, 0, -1))
    with subprocess.Popen(["/usr/bin/sort"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:
        out, _ = proc.communicate(lines)
    print("sort via Popen:", proc.returncode, out.splitlines()[:2], len(out))
    proc = subprocess.Popen(["/usr/bin/wc", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(b"x" * 300000)
    proc.stdin.close()
    print("wc via Popen:", proc.stdout.read().strip(), proc.wait())
    proc.stdout.close()

    # Many short children in a row.
    codes = [subprocess.call(["/bin/sh", "-c", f"exit {n}"]) for n in range(20)]
    print("twenty exits:", codes)

    # A pipeline of two Popen objects connected by a pipe.
    p1 = subprocess.Popen(["/usr/bin/seq", "1", "500"], stdout=subprocess.PIPE)
    p2 = subprocess.Popen(["/usr/bin/awk", "{s += $1} END {print s}"], stdin=p1.stdout,
                          stdout=subprocess.PIPE)
    p1.stdout.close()
    print("seq | awk:", p2.communicate()[0], p1.wait(), p2.returncode)

    # os.posix_spawn and os.posix_spawnp with file actions.
    r, w = os.pipe()
    pid = os.posix_spawn("/bin/echo", ["echo", "posix_spawn", "ok"], {},
                         file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_CLOSE, r)])
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    print("posix_spawn:", data, os.waitstatus_to_exitcode(status))
    pid = os.posix_spawnp("sh", ["sh", "-c", "exit 9"], os.environ)
    print("posix_spawnp:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


main()
