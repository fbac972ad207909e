"""Reference: the textbook thread-per-client blocking-socket server.

python benchmarks/reference/threads.py PORT
"""

from __future__ import annotations

import socket
import sys
import threading

GREETING = b"BIENVENIDO (threads reference)\n"


def handle(conn: socket.socket) -> None:
    with conn, conn.makefile("rb") as lines:
        try:
            conn.sendall(GREETING)
            for line in lines:
                conn.sendall(line.upper())
        except OSError:
            pass


def main(port: int) -> None:
    threading.stack_size(256 * 1024)  # 10,000 threads must fit in memory
    with socket.create_server(("127.0.0.1", port), backlog=1024) as listener:
        print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]))
