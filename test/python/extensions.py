# C extension modules, most of them loaded with dlopen from lib-dynload after the hook was
# installed: hashing and TLS (_hashlib, _ssl), zlib, an in-memory SQLite database, ctypes calling
# libc, json, _decimal, _elementtree, mmap, select, fcntl and resource. Prints computed values.
import ctypes
import ctypes.util
import decimal
import fcntl
import hashlib
import json
import lzma
import bz2
import mmap
import os
import resource
import select
import sqlite3
import ssl
import tempfile
import xml.etree.ElementTree as ET
import zlib


def main():
    data = b"".join(str(i).encode() for i in range(100000))
    print("sha256:", hashlib.sha256(data).hexdigest())
    print("sha3_256:", hashlib.sha3_256(data).hexdigest()[:32])
    print("blake2b:", hashlib.blake2b(data, digest_size=16).hexdigest())
    print("md5 (openssl):", hashlib.new("md5", data).hexdigest())
    print("pbkdf2:", hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 1000).hex()[:32])

    ctx = ssl.create_default_context()
    print("ssl context:", ctx.verify_mode == ssl.CERT_REQUIRED, ctx.check_hostname,
          ssl.OPENSSL_VERSION.startswith("OpenSSL"))
    print("ssl RAND_bytes:", len(ssl.RAND_bytes(32)))

    compressed = zlib.compress(data, 9)
    print("zlib:", len(data), zlib.crc32(data), zlib.adler32(data),
          zlib.decompress(compressed) == data)
    print("lzma roundtrip:", lzma.decompress(lzma.compress(data)) == data)
    print("bz2 roundtrip:", bz2.decompress(bz2.compress(data)) == data)

    db = sqlite3.connect(":memory:")
    db.execute("create table t (k integer primary key, v text, n real)")
    db.executemany("insert into t (v, n) values (?, ?)",
                   ((f"value {i}", i / 7) for i in range(5000)))
    db.commit()
    print("sqlite count/sum:", db.execute("select count(*), sum(k), round(sum(n), 4) from t").fetchone())
    print("sqlite like:", db.execute("select v from t where v like '%499_' order by k").fetchall())
    print("sqlite version tuple ok:", sqlite3.sqlite_version_info >= (3, 0, 0))
    db.close()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "file.db")
        with sqlite3.connect(path) as fdb:
            fdb.execute("pragma journal_mode=wal")
            fdb.execute("create table x (a)")
            fdb.executemany("insert into x values (?)", ((i,) for i in range(1000)))
        fdb.close()
        with sqlite3.connect(path) as fdb:
            print("sqlite file db:", fdb.execute("select count(*), max(a) from x").fetchone())
        fdb.close()

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    print("ctypes getpid == os.getpid:", libc.getpid() == os.getpid())
    libc.strlen.restype = ctypes.c_size_t
    print("ctypes strlen:", libc.strlen(b"zpoline"))
    buf = ctypes.create_string_buffer(64)
    libc.snprintf(buf, 64, b"%d-%s", 42, b"x")
    print("ctypes snprintf:", buf.value)
    SYS_getppid = 110
    print("ctypes syscall(getppid) == os.getppid:", libc.syscall(SYS_getppid) == os.getppid())
    values = (ctypes.c_int * 10)(*range(10, 0, -1))
    cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    libc.qsort(values, 10, ctypes.sizeof(ctypes.c_int), cmp(lambda a, b: a[0] - b[0]))
    print("ctypes qsort with callback:", list(values))

    doc = {"name": "zpoline", "numbers": list(range(10)), "nested": {"pi": 3.14159, "ok": True}}
    text = json.dumps(doc, sort_keys=True)
    print("json:", text, json.loads(text) == doc)

    decimal.getcontext().prec = 50
    print("decimal:", decimal.Decimal(1) / decimal.Decimal(7), decimal.Decimal(2).sqrt())

    root = ET.fromstring("<r>" + "".join(f"<i n='{n}'>{n * n}</i>" for n in range(20)) + "</r>")
    print("elementtree:", sum(int(e.text) for e in root.iter("i")), root[5].get("n"),
          ET.tostring(root[3]))

    with tempfile.TemporaryFile() as f:
        f.write(b"\0" * 65536)
        f.flush()
        with mmap.mmap(f.fileno(), 65536) as m:
            m[100:107] = b"zpoline"
            m.flush()
            print("mmap:", m.find(b"zpoline"), len(m))
        f.seek(100)
        print("mmap wrote file:", f.read(7))
    anon = mmap.mmap(-1, 1 << 20)
    anon.write(b"abc" * 1000)
    print("anonymous mmap:", anon[:6], anon.tell())
    anon.close()

    r, w = os.pipe()
    flags = fcntl.fcntl(r, fcntl.F_GETFL)
    fcntl.fcntl(r, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    print("fcntl nonblock:", bool(fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK))
    try:
        os.read(r, 1)
    except BlockingIOError as error:
        print("nonblocking read:", type(error).__name__)
    os.write(w, b"ping")
    poller = select.poll()
    poller.register(r, select.POLLIN)
    print("poll:", [(fd == r, bool(ev & select.POLLIN)) for fd, ev in poller.poll(1000)])
    ep = select.epoll()
    ep.register(r, select.EPOLLIN)
    print("epoll:", [(fd == r, bool(ev & select.EPOLLIN)) for fd, ev in ep.poll(1)])
    ep.close()
    print("select:", select.select([r], [], [], 1)[0] == [r], os.read(r, 10))
    with tempfile.TemporaryFile() as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        fcntl.lockf(f, fcntl.LOCK_UN)
        print("flock: ok")
    os.close(r)
    os.close(w)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    print("rlimit nofile set:", resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(soft, 512))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("getrusage maxrss positive:", usage.ru_maxrss > 0)
    print("page size:", resource.getpagesize())


main()
