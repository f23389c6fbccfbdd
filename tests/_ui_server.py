"""The dashboard served by a real uvicorn in a thread, on a free loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

WAIT = 10


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Yields the base URL. The socket listens before the server thread starts, so a first
    connection waits in its backlog until uvicorn accepts it: no start-up race and no polling."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT * 2)
        sock.close()
        assert not thread.is_alive()
