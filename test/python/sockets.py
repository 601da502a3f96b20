# Sockets: socketpair echo between threads, selectors multiplexing several pairs, 1 MiB transfers
# with sendall/recv loops (checksums printed), a loopback TCP server on 127.0.0.1 port 0, UDP
# datagrams, and asyncio echo servers over TCP and a Unix socketpair.
import asyncio
import hashlib
import selectors
import socket
import threading

MIB = 1 << 20


def payload(seed, size):
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def recv_exactly(sock, size):
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def socketpair_echo():
    a, b = socket.socketpair()

    def echo():
        while True:
            data = b.recv(65536)
            if not data:
                break
            b.sendall(data)
        b.close()

    t = threading.Thread(target=echo)
    t.start()
    replies = []
    for n in range(100):
        msg = f"message {n}".encode()
        a.sendall(msg)
        replies.append(recv_exactly(a, len(msg)) == msg)
    big = payload(1, MIB)
    sender = threading.Thread(target=a.sendall, args=(big,))
    sender.start()
    back = recv_exactly(a, MIB)
    sender.join()
    a.shutdown(socket.SHUT_WR)
    tail = a.recv(10)
    t.join()
    a.close()
    print("socketpair echo:", all(replies), len(back), hashlib.sha256(back).hexdigest()[:16],
          back == big, tail)


def selector_multiplex():
    sel = selectors.DefaultSelector()
    pairs = [socket.socketpair() for _ in range(6)]
    for i, (left, right) in enumerate(pairs):
        right.setblocking(False)
        sel.register(right, selectors.EVENT_READ, i)
    for i, (left, _) in enumerate(pairs):
        left.sendall(bytes([65 + i]) * (1000 * (i + 1)))
        left.shutdown(socket.SHUT_WR)
    received = {i: 0 for i in range(len(pairs))}
    open_count = len(pairs)
    while open_count:
        for key, _ in sel.select(timeout=5):
            data = key.fileobj.recv(4096)
            if data:
                received[key.data] += len(data)
            else:
                sel.unregister(key.fileobj)
                open_count -= 1
    sel.close()
    for left, right in pairs:
        left.close()
        right.close()
    print("selectors:", [received[i] for i in sorted(received)])


def tcp_loopback():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    digests = []

    def serve():
        for _ in range(3):
            conn, _ = server.accept()
            with conn:
                data = recv_exactly(conn, MIB)
                digest = hashlib.sha256(data).digest()
                conn.sendall(digest)
        server.close()

    t = threading.Thread(target=serve)
    t.start()
    for seed in range(3):
        with socket.create_connection(("127.0.0.1", port)) as c:
            data = payload(seed, MIB)
            c.sendall(data)
            digests.append(recv_exactly(c, 32) == hashlib.sha256(data).digest())
    t.join()
    print("tcp loopback 3 x 1 MiB:", digests)


def udp():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for n in range(50):
        tx.sendto(f"dgram {n}".encode(), rx.getsockname())
    got = sorted(int(rx.recvfrom(100)[0].split()[1]) for _ in range(50))
    print("udp datagrams:", got == list(range(50)))
    rx.close()
    tx.close()


async def asyncio_echo():
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        message = f"client {n} ".encode() * 1000
        writer.write(message)
        writer.write_eof()
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return len(data), data == message.upper()

    results = await asyncio.gather(*(client(n) for n in range(10)))
    server.close()
    await server.wait_closed()
    print("asyncio tcp echo:", results)

    a, b = socket.socketpair()
    reader_b, writer_b = await asyncio.open_connection(sock=b)
    reader_a, writer_a = await asyncio.open_connection(sock=a)
    big = payload(7, MIB)

    async def send():
        writer_a.write(big)
        await writer_a.drain()
        writer_a.write_eof()

    _, received = await asyncio.gather(send(), reader_b.readexactly(MIB))
    writer_a.close()
    writer_b.close()
    print("asyncio socketpair:", hashlib.sha256(received).hexdigest()[:16], received == big)
    loop = asyncio.get_running_loop()
    value = await loop.run_in_executor(None, sum, range(1000))
    await asyncio.sleep(0.01)
    print("asyncio executor:", value)


socketpair_echo()
selector_multiplex()
tcp_loopback()
udp()
asyncio.run(asyncio_echo())
