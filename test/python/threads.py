# Threads: file I/O from 8 threads, queue hand-off, an Event barrier, and a ThreadPoolExecutor
# hashing data. Every printed value is computed; results are sorted so thread order never shows.
import concurrent.futures
import hashlib
import os
import queue
import tempfile
import threading

THREADS = 8


def file_worker(directory, index, start, results):
    start.wait()
    path = os.path.join(directory, f"file{index}.bin")
    payload = bytes((index * 31 + i) % 251 for i in range(64 * 1024))
    with open(path, "wb") as f:
        for offset in range(0, len(payload), 4096):
            f.write(payload[offset:offset + 4096])
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        data = f.read()
    os.rename(path, path + ".done")
    st = os.stat(path + ".done")
    results.put((index, st.st_size, hashlib.sha256(data).hexdigest()[:16], data == payload))


def main():
    results = queue.Queue()
    start = threading.Event()
    with tempfile.TemporaryDirectory() as directory:
        threads = [threading.Thread(target=file_worker, args=(directory, i, start, results))
                   for i in range(THREADS)]
        for t in threads:
            t.start()
        start.set()
        for t in threads:
            t.join()
        names = sorted(os.listdir(directory))
    print("files:", " ".join(names))
    rows = sorted(results.get_nowait() for _ in range(THREADS))
    for index, size, digest, same in rows:
        print(f"file {index}: size={size} sha256={digest} roundtrip={same}")
    print("queue empty:", results.empty())

    # Producer/consumer through a bounded queue, with sentinels.
    work = queue.Queue(maxsize=4)
    done = queue.Queue()

    def consumer():
        total = 0
        while True:
            item = work.get()
            if item is None:
                break
            total += item * item
        done.put(total)

    consumers = [threading.Thread(target=consumer) for _ in range(4)]
    for t in consumers:
        t.start()
    for n in range(1000):
        work.put(n)
    for _ in consumers:
        work.put(None)
    for t in consumers:
        t.join()
    print("sum of squares:", sum(done.get() for _ in consumers))

    # Event ping-pong between two threads.
    ping, pong = threading.Event(), threading.Event()
    rounds = []

    def ponger():
        for i in range(200):
            ping.wait()
            ping.clear()
            rounds.append(i)
            pong.set()

    t = threading.Thread(target=ponger)
    t.start()
    for _ in range(200):
        ping.set()
        pong.wait()
        pong.clear()
    t.join()
    print("ping-pong rounds:", len(rounds), rounds == list(range(200)))

    # Hashing in a pool.
    blocks = [bytes([i % 256]) * (32 * 1024 + i) for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=THREADS) as pool:
        digests = list(pool.map(lambda b: hashlib.sha256(b).digest(), blocks))
        futures = [pool.submit(sum, range(n * 1000)) for n in range(16)]
        sums = sorted(f.result() for f in concurrent.futures.as_completed(futures))
    combined = hashlib.sha256(b"".join(digests)).hexdigest()
    print("pool sha256 of 64 blocks:", combined)
    print("pool sums:", sums[:4], sums[-1])
    print("threads alive at end:", threading.active_count())


main()
