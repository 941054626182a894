"""What the app holds between calls: one evaluation thread (durable-rules is not
thread-safe), replaced when it is wedged, and one HTTP client without cookies."""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import httpx

from cdss.assessment import Assessment
from cdss.errors import HookRequestError
from cdss.hooks import HOOK, V2, HookRequest, assess_request, evaluate_request
from cdss.outputs.cds_hooks import cards
from cdss.rulesets import Ruleset
from cdss.service._logging import emit, log_failure
from cdss.service._responses import INTERNAL, HTTPError

__all__ = ["Runtime", "Worker", "assess_in_thread", "evaluate_in_thread", "no_cookies"]

#: Evaluation threads left running past their timeout at most; past that, no new one.
_MAX_STUCK = 2
#: The marker that stands for a background job on a worker's queue.
_BACKGROUND: Future[Any] = Future()


def _nothing() -> None:
    return None


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: no state may pass between calls."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(
        allowed_domains=[]))


def evaluate_in_thread(req: HookRequest, rs: Ruleset, fetched: dict[str, Any],
                        as_of: datetime | None, timezone_name: str = "UTC",
                        mode: str = "strict", hook: str = HOOK, version: str = V2) -> Any:
    """:func:`evaluate_request`, in the evaluation thread. A failure of any kind
    (a bug, or a ``SystemExit`` or ``KeyboardInterrupt`` from a library, which
    would stop the event loop) is logged without its message and becomes a
    500 for this call only; a :class:`HookRequestError` (unusable data) stays one."""
    with _contained():
        return evaluate_request(req, rs, fetched=fetched, as_of=as_of, timezone=timezone_name,
                                mode=mode, hook=hook, version=version)


def assess_in_thread(req: HookRequest, rs: Ruleset, fetched: dict[str, Any],
                     as_of: datetime | None, timezone_name: str = "UTC",
                     mode: str = "strict", hook: str = HOOK,
                     version: str = V2) -> tuple[Any, Assessment]:
    """:func:`evaluate_in_thread` that also gives the Assessment behind the
    cards (for a shadowed service, whose candidate is compared with it)."""
    with _contained():
        assessment = assess_request(req, rs, fetched=fetched, as_of=as_of,
                                    timezone=timezone_name, mode=mode, hook=hook,
                                    version=version)
        body = {"cards": cards(assessment, rs, hook_instance=req.hookInstance,
                               only_orders=hook != HOOK, version=version)}
        return body, assessment


@contextlib.contextmanager
def _contained() -> Iterator[None]:
    try:
        yield
    except HookRequestError:
        raise
    except BaseException as exc:
        log_failure(exc, "evaluation")
        raise HTTPError(500, INTERNAL) from None


class Worker:
    """One evaluation thread and its queue of jobs, and since when
    (``time.monotonic()``) it has been running its current job (``None``:
    idle). A daemon thread, so that one left stuck does not hold up the
    process's exit; it survives whatever a job raises."""

    def __init__(self, background_limit: int = 0) -> None:
        self.jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        self.since: float | None = None
        self.reported: float | None = None  # the ``since`` of the job last logged as stuck
        # Background jobs (shadow evaluations) wait apart, at most background_limit of
        # them; a marker on ``jobs`` stands for each, and one runs only when no call waits.
        self.background: deque[Callable[[], Any]] = deque()
        self.background_limit = background_limit
        self.waiting = 0  # calls' jobs put and not yet taken
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, name="cdss-eval", daemon=True).start()

    def submit(self, job: Callable[[], Any]) -> asyncio.Future[Any]:
        future: Future[Any] = Future()
        with self.lock:
            self.waiting += 1
        self.jobs.put((future, job))
        return asyncio.wrap_future(future)

    def offer(self, job: Callable[[], Any]) -> bool:
        """Queue ``job`` to run when no call's evaluation waits; False (and not
        queued) when ``background_limit`` jobs wait already."""
        with self.lock:
            if len(self.background) >= self.background_limit:
                return False
            self.background.append(job)
        self.jobs.put((_BACKGROUND, _nothing))
        return True

    def stop(self) -> None:
        """End the thread once it has run the jobs it holds."""
        self.jobs.put(None)

    def _serve(self) -> None:
        while (item := self.jobs.get()) is not None:
            future, job = item
            if future is _BACKGROUND:
                self._background()
                continue
            with self.lock:
                self.waiting -= 1
            if not future.set_running_or_notify_cancel():
                continue  # its call stopped waiting (a 503)
            self.since = time.monotonic()
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                self.since = None

    def _background(self) -> None:
        with self.lock:
            if self.waiting:  # a call waits: it goes first, the marker goes back
                self.jobs.put((_BACKGROUND, _nothing))
                return
            job = self.background.popleft()
        self.since = time.monotonic()
        try:
            job()  # background jobs handle their own failures
        except BaseException as exc:
            log_failure(exc, "background job")
        finally:
            self.since = None

    def overran(self, timeout: float) -> float | None:
        """When the job it runs began, if that was more than ``timeout`` seconds ago."""
        since = self.since
        return since if since is not None and time.monotonic() - since > timeout else None


class Runtime:
    """What the app holds between calls: the evaluation thread (one:
    durable-rules is not thread-safe, and cdss.engine also locks) and an HTTP client."""

    def __init__(self, timeout: float, evaluation_timeout: float,
                 background_limit: int = 0) -> None:
        self.background_limit = background_limit
        self.timeout = timeout
        self.evaluation_timeout = evaluation_timeout
        self.current: Worker | None = None
        self.stuck: list[Worker] = []
        self.client: httpx.AsyncClient | None = None

    def worker(self) -> Worker:
        """The evaluation thread. One still running a job begun longer ago than
        the evaluation timeout (whose call has had its 503) is wedged or about
        to be wasted: it is left to finish, and a new thread takes the next
        calls, unless ``_MAX_STUCK`` threads are left behind already."""
        current = self.current
        if current is None:
            current = self.current = Worker(self.background_limit)
            return current
        since = current.overran(self.evaluation_timeout)
        if since is None:
            return current
        self.stuck = [w for w in self.stuck if w.since is not None]
        replace = len(self.stuck) < _MAX_STUCK
        if replace or current.reported != since:
            current.reported = since
            emit(logging.ERROR, {"event": "evaluation thread stuck", "replaced": replace,
                                  "stuck_threads": len(self.stuck) + 1})
        if replace:
            current.stop()
            self.stuck.append(current)
            current = self.current = Worker(self.background_limit)
        return current

    def http(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False,
                                            cookies=no_cookies())
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        for worker in (self.current, *self.stuck):
            if worker is not None:
                worker.stop()
        self.current = None
        self.stuck = []
