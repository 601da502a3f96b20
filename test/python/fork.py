# fork: os.fork children that compute and report through a pipe, their exit codes and signal
# deaths through os.waitpid, a fork from a thread, and multiprocessing pools with the "fork" start
# method and the "spawn" start method (children are /usr/bin/python3, not this embedded host).
import hashlib
import multiprocessing
import os
import signal
import sys
import threading


def square(n):
    return n * n


def digest(n):
    return hashlib.sha256(str(n).encode()).hexdigest()[:8]


def fork_children():
    children = {}
    for n in range(8):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            value = sum(i * n for i in range(10000))
            os.write(w, f"{n}:{value}".encode())
            os.close(w)
            os._exit(n + 10)
        os.close(w)
        children[pid] = (n, r)
    rows = []
    for pid, (n, r) in children.items():
        with os.fdopen(r, "rb") as f:
            data = f.read().decode()
        waited, status = os.waitpid(pid, 0)
        rows.append((n, data, waited == pid, os.WIFEXITED(status), os.WEXITSTATUS(status)))
    for row in sorted(rows):
        print("child", *row)


def fork_statuses():
    results = []
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(99)
    _, status = os.waitpid(pid, 0)
    results.append(("killed", os.WIFSIGNALED(status), os.WTERMSIG(status)))
    pid = os.fork()
    if pid == 0:
        sys.exit(3)  # SystemExit in a fork child: unwinds, flushes, exits 3 without atexit output
    _, status = os.waitpid(pid, 0)
    results.append(("sys.exit", os.waitstatus_to_exitcode(status)))
    pid = os.fork()
    if pid == 0:
        raise SystemExit(0)
    _, status = os.waitpid(pid, 0)
    results.append(("SystemExit(0)", os.waitstatus_to_exitcode(status)))
    # WNOHANG before the child exits, then a blocking wait.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(4)
    os.close(r)
    early = os.waitpid(pid, os.WNOHANG)
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    results.append(("WNOHANG", early, os.waitstatus_to_exitcode(status)))
    # Grandchild: fork inside a fork child.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        inner = os.fork()
        if inner == 0:
            os.write(w, b"grandchild")
            os._exit(0)
        _, s = os.waitpid(inner, 0)
        os._exit(20 + os.waitstatus_to_exitcode(s))
    os.close(w)
    with os.fdopen(r, "rb") as f:
        grand = f.read()
    _, status = os.waitpid(pid, 0)
    results.append(("grandchild", grand, os.waitstatus_to_exitcode(status)))
    for row in results:
        print("status", *row)


def fork_from_thread():
    out = []

    def run():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"from thread's child")
            os._exit(6)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out.append(f.read())
        out.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    print("fork from thread:", *out)


def pools():
    with multiprocessing.get_context("fork").Pool(4) as pool:
        print("fork pool squares:", pool.map(square, range(20)))
        print("fork pool digests:", sorted(pool.imap_unordered(digest, range(6))))
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=q.put, args=(n * 3,)) for n in range(4)]
    for p in procs:
        p.start()
    got = sorted(q.get() for _ in procs)
    for p in procs:
        p.join()
    print("fork processes:", got, [p.exitcode for p in procs])

    # "spawn" runs a fresh interpreter; sys.executable here is the host, so name python3.
    multiprocessing.set_executable("/usr/bin/python3")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        print("spawn pool squares:", pool.map(square, range(10)))


if __name__ == "__main__":
    fork_children()
    fork_statuses()
    fork_from_thread()
    pools()
