"""Running the service as a platform expects: ``cdss serve --workers N``.

**One worker** is one process serving the app with uvicorn on a socket it
binds itself: created with ``IPPROTO_TCP`` (asyncio sets ``TCP_NODELAY`` only
on such sockets; without it every answer written in two parts waits ~40 ms
for a delayed ACK) and, under a supervisor, ``SO_REUSEPORT``, so that the
kernel spreads new connections over the workers (uvicorn's own ``--workers``
shares one listening socket, and one process then takes every keep-alive
connection). Once the app has started, ``gc.freeze()`` moves what start-up
allocated (rulesets, modules) out of the collector's sight, so that
collections stay short.

**SIGTERM** (or SIGINT) makes a worker answer 503 at ``/readyz`` at once,
keep serving for ``drain_seconds`` (so that a load balancer probing
readiness stops sending it calls), then stop accepting, finish the calls in
flight (at most ``graceful_seconds``), write the store's queue, and exit 0.
Feedback is answered 200 only once its rows are committed, so none that was
acknowledged is lost, however a worker ends.

**The supervisor** starts N workers (the same command, marked by
``CDSS_SERVE_WORKER``), gives them one ``PROMETHEUS_MULTIPROC_DIR`` so that
any worker's ``/metrics`` counts them all, replaces a worker that dies, and
on SIGTERM passes it on, waits for them, and exits 0.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from cdss.service._logging import emit
from cdss.service._metrics import MULTIPROC_ENV, mark_dead

__all__ = ["WORKER_ENV", "listening_socket", "run_worker", "supervise"]

#: Set by the supervisor in each worker's environment (its worker number).
WORKER_ENV = "CDSS_SERVE_WORKER"
#: A worker dying this soon after its start counts as failing to start.
_EARLY_DEATH = 5.0
#: Workers failing to start in a row before the supervisor gives up.
_MAX_EARLY_DEATHS = 5


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (``IPPROTO_TCP``, ``TCP_NODELAY``;
    with ``reuse_port``, ``SO_REUSEPORT`` so that several processes share the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def run_worker(app: Any, sock: socket.socket, *, log_level: str = "info",
               drain_seconds: float = 0.0, graceful_seconds: float = 30.0) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT (see the module doc);
    returns once the calls in flight are answered and the store is written."""
    import uvicorn

    service = getattr(app.state, "service", None)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            # uvicorn says where it listens only for sockets it binds itself
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port)
            gc.collect()
            gc.freeze()  # start-up's objects are not scanned again by every collection
            emit(logging.INFO, {"event": "worker started", "pid": os.getpid()})

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # not uvicorn's own, which raises the signal again once stopped: a
            # worker stopped by SIGTERM has done what was asked and exits 0
            if self.should_exit:
                self.force_exit = sig == signal.SIGINT
                return
            if service is not None and not service.draining:
                service.draining = True  # /readyz answers 503 from now on
                service.metrics.ready.set(0)
                emit(logging.INFO, {"event": "stopping", "pid": os.getpid(),
                                    "drain_seconds": drain_seconds})
                if drain_seconds > 0:
                    timer = threading.Timer(drain_seconds, self._stop)
                    timer.daemon = True
                    timer.start()
                    return
            self._stop()

        def _stop(self) -> None:
            self.should_exit = True

    config = uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False,
                            lifespan="on", timeout_graceful_shutdown=max(1, round(
                                graceful_seconds)))
    _Server(config).run(sockets=[sock])
    emit(logging.INFO, {"event": "worker stopped", "pid": os.getpid()})


def supervise(command: Sequence[str], workers: int, *,
              stop_seconds: float = 60.0) -> int:
    """Run ``workers`` copies of ``command`` (each told its number in
    ``CDSS_SERVE_WORKER``), replacing those that die, until SIGTERM or SIGINT;
    then stop them (SIGTERM, SIGKILL after ``stop_seconds``). The exit code:
    0 when every worker stopped cleanly, 1 when workers kept failing at start."""
    own_dir = not os.environ.get(MULTIPROC_ENV)
    folder = Path(tempfile.mkdtemp(prefix="cdss-metrics-")) if own_dir \
        else Path(os.environ[MULTIPROC_ENV])
    if not own_dir:  # values of an earlier run would be summed in
        for stale in folder.glob("*.db"):
            stale.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)
    stopping = threading.Event()

    def stop(sig: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    running: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    early_deaths = 0
    code = 0

    def start(number: int) -> None:
        env = {**os.environ, WORKER_ENV: str(number), MULTIPROC_ENV: str(folder)}
        running[number] = (subprocess.Popen(list(command), env=env), time.monotonic())

    try:
        for number in range(workers):
            start(number)
        emit(logging.INFO, {"event": "supervisor started", "workers": workers,
                            "pids": [p.pid for p, _ in running.values()]})
        while not stopping.wait(0.2):
            for number, (process, since) in list(running.items()):
                status = process.poll()
                if status is None:
                    continue
                mark_dead(process.pid)
                early_deaths = early_deaths + 1 if time.monotonic() - since < _EARLY_DEATH \
                    else 0
                emit(logging.ERROR, {"event": "worker died", "pid": process.pid,
                                     "status": status, "replaced": True})
                if early_deaths >= _MAX_EARLY_DEATHS:
                    emit(logging.CRITICAL, {"event": "workers keep failing at start",
                                            "deaths": early_deaths})
                    code = 1
                    stopping.set()
                    break
                start(number)
    finally:
        for process, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_seconds
        for process, _ in running.values():
            try:
                status = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                status = process.wait()
            if status != 0:
                code = 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_dir:
            shutil.rmtree(folder, ignore_errors=True)
        emit(logging.INFO, {"event": "supervisor stopped", "status": code})
    return code


def worker_command(argv: Sequence[str] | None = None) -> list[str]:
    """The command a worker runs: this very ``cdss`` command line."""
    return [sys.executable, "-m", "cdss.cli", *(sys.argv[1:] if argv is None else argv)]
