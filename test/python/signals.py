# Signals: a Python handler run many times through os.kill to ourselves, SIGALRM from an interval
# timer interrupting time.sleep, select and a blocking os.read (PEP 475: the calls are retried
# after the handler runs), signal.pthread_kill to a thread, and sigwait. Only counts fixed by the
# program are printed.
import os
import select
import signal
import threading
import time

counts = {"usr1": 0, "usr2": 0, "alrm": 0}


def on_usr1(signum, frame):
    counts["usr1"] += 1


def on_alrm(signum, frame):
    counts["alrm"] += 1


def main():
    signal.signal(signal.SIGUSR1, on_usr1)
    for _ in range(500):
        os.kill(os.getpid(), signal.SIGUSR1)
    print("SIGUSR1 handled:", counts["usr1"])

    for _ in range(100):
        signal.raise_signal(signal.SIGUSR1)
    print("after raise_signal:", counts["usr1"])

    # SIGALRM every 10 ms interrupts time.sleep; sleep is resumed for its full duration.
    signal.signal(signal.SIGALRM, on_alrm)
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    start = time.monotonic()
    time.sleep(0.1)
    slept = time.monotonic() - start
    while counts["alrm"] < 5:
        time.sleep(0.005)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    print("sleep completed despite alarms:", slept >= 0.1, counts["alrm"] >= 5)

    # A blocking read on a pipe: alarms interrupt it, the handler runs, the read is retried; a
    # thread writes once the handler has run 3 times.
    r, w = os.pipe()
    counts["alrm"] = 0
    reached = threading.Event()

    def writer():
        # Alarms go to the main thread, blocked in read; the deadline only avoids a hang.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        deadline = time.monotonic() + 10
        while counts["alrm"] < 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        if counts["alrm"] >= 3:
            reached.set()
        os.write(w, b"after alarms")

    def on_alrm_counting(signum, frame):
        counts["alrm"] += 1

    signal.signal(signal.SIGALRM, on_alrm_counting)
    t = threading.Thread(target=writer)
    t.start()
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    data = os.read(r, 100)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    t.join()
    print("os.read retried:", data, reached.is_set())

    # select on the pipe, interrupted by alarms until the handler has written to it.
    counts["alrm"] = 0

    def on_alrm_writing(signum, frame):
        counts["alrm"] += 1
        if counts["alrm"] == 4:
            os.write(w, b"!")

    signal.signal(signal.SIGALRM, on_alrm_writing)
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    readable, _, _ = select.select([r], [], [], 10.0)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    print("select retried:", readable == [r], os.read(r, 10), counts["alrm"] >= 4)
    os.close(r)
    os.close(w)

    # A thread waits in sigwait for SIGUSR2 sent to it by pthread_kill (blocked everywhere).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    got = []
    ready = threading.Event()

    def waiter():
        ready.set()
        for _ in range(10):
            got.append(signal.sigwait({signal.SIGUSR2}))

    t = threading.Thread(target=waiter)
    t.start()
    ready.wait()
    for sent in range(1, 11):
        signal.pthread_kill(t.ident, signal.SIGUSR2)
        while len(got) < sent:  # one at a time: a second pending SIGUSR2 would merge
            time.sleep(0.001)
    t.join()
    print("sigwait received:", len(got), set(got) == {signal.SIGUSR2})

    # pthread_kill with a Python handler: handlers always run in the main thread.
    signal.signal(signal.SIGUSR1, on_usr1)
    counts["usr1"] = 0
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    print("pthread_kill to main:", counts["usr1"])

    # sigtimedwait on a pending blocked signal.
    os.kill(os.getpid(), signal.SIGUSR2)
    info = signal.sigtimedwait({signal.SIGUSR2}, 1.0)
    print("sigtimedwait:", info.si_signo == signal.SIGUSR2, info.si_pid == os.getpid())
    print("pending now:", signal.sigpending())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})

    # Default actions are restored and kept.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGUSR1)
    print("ignored SIGUSR1, still alive; handler count:", counts["usr1"])


main()
