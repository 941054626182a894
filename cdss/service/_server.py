"""Running an app in a background thread (tests, benchmarks, embedding)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from cdss.errors import CDSSError
from cdss.service._logging import disable_access_log

__all__ = ["base_url", "bind", "serve_in_background"]


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (``0``: a free port), for
    :func:`serve_in_background`; bind first to know the URL (the JWT audience)
    before creating the app."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets, and
    # without it a response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock


def base_url(sock: socket.socket) -> str:
    """``http://host:port`` of a socket from :func:`bind`."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@contextlib.contextmanager
def serve_in_background(app: Any, *, host: str = "127.0.0.1", port: int = 0,
                        sock: socket.socket | None = None,
                        log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL.

    The listening socket (``sock``, or one bound to ``host``:``port``; port 0
    is a free port) exists before the thread starts and the call returns once
    the server has started, so the URL can be used at once. uvicorn's access
    log is off (:func:`disable_access_log`). The server stops when the ``with`` block ends.
    """
    import uvicorn

    ready = threading.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets=sockets)
            finally:
                ready.set()

    if sock is None:
        sock = bind(host, port)
    url = base_url(sock)
    disable_access_log()
    server = _Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                    lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"cdss-serve-{url.rsplit(':', 1)[-1]}", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout=60) or not server.started:
            raise CDSSError("the CDS Hooks service did not start")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
