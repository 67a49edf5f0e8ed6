"""Run a real Milvus 2.3.5 standalone for the tests, reachable only through a Unix socket.

Runs under the Python of a separate virtualenv holding the PyPI package ``milvus==2.3.5``
("embedded Milvus"; it pins old grpcio/protobuf-free code but ships its own server binary, and is kept
out of our venv so it cannot disturb pymilvus/milvus-lite). Start it inside fresh network and PID
namespaces, with loopback up::

    unshare --net --pid --fork --kill-child sh -c \\
        'ip link set lo up && exec .milvus-venv/bin/python tests/milvus_server.py DATA_DIR'

Why: Milvus 2.3.5 binds its gRPC ports (19530 and eight internal ones) and its metrics port on every
interface, whatever ``proxy.ip`` says (checked with ``ss -ltnp``: ``ip`` only sets the advertised
address). In its own network namespace nothing of it is reachable from outside; this script then
forwards ``DATA_DIR/milvus.sock`` (a filesystem socket, visible across network namespaces) to the
proxy's 127.0.0.1:19530, and clients connect to ``unix:DATA_DIR/milvus.sock``. As PID 1 of its PID
namespace this script takes the server down with it however it ends (the kernel kills the rest of
the namespace), and ``--kill-child`` kills it if ``unshare`` itself is killed.

Authorisation is on (user ``root``, password ``Milvus``) so the tests prove tokens reach the server.
``DATA_DIR/ready`` appears once the server answers; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import types

SOCKET_NAME = "milvus.sock"
READY_NAME = "ready"
TOKEN = "root:Milvus"  # Milvus's documented default credentials, on a throwaway server


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # Either side ending ends both: the other direction's recv() then fails and closes too.
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _forward(listener: socket.socket, port: int) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", port))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def main(data_dir: str) -> None:
    from milvus import MilvusServer, MilvusServerConfig  # the separate venv's package

    server = MilvusServer(MilvusServerConfig(), wait_for_started=False)
    server.set_base_dir(data_dir)
    server.config.set("authorization_enabled", True)

    def stop(signum: int, frame: types.FrameType | None) -> None:
        # Milvus 2.3.5 takes over 20 s to stop on SIGTERM (measured); the data is throwaway, so give
        # it 3 s. Then this process, PID 1 of the namespace, exits and the kernel kills what is left.
        if server.server_proc is not None:
            server.server_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.server_proc.wait(timeout=3)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    server.wait_started(timeout=120_000)

    path = os.path.join(data_dir, SOCKET_NAME)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by an earlier run on this data dir (a restart test reuses it)
    listener.bind(path)
    listener.listen(64)
    threading.Thread(target=_forward, args=(listener, server.listen_port), daemon=True).start()
    with open(os.path.join(data_dir, READY_NAME), "w", encoding="utf-8") as ready:
        ready.write(f"{server.server_proc.pid}\n")
    sys.exit(server.server_proc.wait())  # the server died on its own: say so by the exit status


if __name__ == "__main__":
    main(sys.argv[1])
