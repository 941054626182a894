"""The service's store: the cards issued, the feedback on them, the
differences shadow mode found, and the replay cache of client tokens. No
patient data is written to it: no patient id, no values, no resource ids, no
token (see docs/deploying.md, "The store", for the schema).

Two backends hold the same schema (:mod:`cdss.service._backends`): one SQLite
file (WAL), the embedded default for one host, and PostgreSQL, shared by every
process and replica. An empty store is created at start; an existing one of an
older schema version is changed only by ``cdss store migrate``
(:func:`migrate_store`).

One writer thread per process writes; the event loop only puts work on its
bounded queue (never waiting on the database), except feedback, whose call
waits, off the loop, until its rows are committed, so that a client is told
when its feedback was not stored, and the replay check, whose answer the
call needs (:meth:`Store.remember`: one insert on a unique key). Work that
finds the queue full, and a batch whose transaction fails, is counted and
logged with what was lost; the clinical answer never waits for the store and
never fails because of it.

Rows are pruned on start and every hour: the map of cards issued after
``card_days``, everything else after ``keep_days``; expired replay entries
every minute. Reports read the store with their own connection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from cdss.errors import CDSSError, ServiceConfigError, StoreError
from cdss.service._backends import (
    SCHEMA_VERSION,
    Connection,
    PostgresBackend,
    SqliteBackend,
    backend_for,
    is_url,
    migrate,
)
from cdss.service._logging import emit, log_failure

__all__ = ["DATA_DIR_ENV", "SCHEMA_VERSION", "STORE_ENV", "IssuedCard", "ShadowCall", "Store",
           "default_store_path", "feedback_report", "hour_of", "migrate_store", "open_store",
           "read_store", "shadow_report"]

#: Environment variable naming the folder of the default store file.
DATA_DIR_ENV = "CDSS_DATA_DIR"
#: Environment variable naming the store (a file or a ``postgresql://`` URL).
STORE_ENV = "CDSS_STORE"
_FILE = "cdss-service.sqlite3"
#: A card with no rule (the left-out warning) is counted under this rule id.
NO_RULE = ""
#: Seconds between prunings while the service runs.
_PRUNE_EVERY = 3600.0
#: Seconds between prunings of expired replay entries.
_PRUNE_REPLAY_EVERY = 60.0
#: Seconds between log lines about work dropped because the queue was full.
_DROP_LOG_EVERY = 10.0

Location = str | Path


def default_store_path(environ: Mapping[str, str] | None = None) -> Path:
    """The store file when the configuration names none: in ``CDSS_DATA_DIR``,
    else ``$XDG_STATE_HOME/cdss``, else ``~/.local/state/cdss``."""
    env = os.environ if environ is None else environ
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]) / _FILE
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cdss" / _FILE


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def hour_of(at: datetime) -> str:
    """The hour ``at`` falls in, as the store writes it (``2026-03-01T14:00:00Z``)."""
    return _iso(at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0))


def replay_key(issuer: str, jti: str) -> str:
    """What the replay cache keeps of a token: a hash of its issuer and ``jti``."""
    return hashlib.sha256(f"{issuer}\n{jti}".encode()).hexdigest()


def migrate_store(location: Location) -> tuple[int | None, int]:
    """Bring the store at ``location`` to this cdss's schema version (``cdss
    store migrate``); the version found (``None``: empty) and the version now.
    :class:`StoreError` when it cannot be reached or is newer than this cdss."""
    backend = _backend(location)
    try:
        if isinstance(backend, SqliteBackend):
            backend.path.parent.mkdir(parents=True, exist_ok=True)
        return migrate(backend)
    except OSError as exc:
        raise StoreError(f"the store {backend.where} cannot be created: {exc.strerror}") \
            from None
    except backend.errors() as exc:
        raise StoreError(f"the store {backend.where} cannot be used: "
                         f"{type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        backend.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _backend(location: Location, **options: Any) -> SqliteBackend | PostgresBackend:
    try:
        return backend_for(location, **options)
    except CDSSError:
        raise
    except Exception as exc:  # psycopg's pool refuses a malformed URL
        raise StoreError(f"the store {location!s:.40} cannot be used: "
                         f"{type(exc).__name__}") from None


# --------------------------------------------------------------------------- #
# What is written
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class IssuedCard:
    """A card as the store keeps it: its uuid, its kind and its rules."""

    uuid: str
    kind: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class ShadowCall:
    """What one shadow evaluation found, without patient data: the versions,
    the salted hash of the patient id (``None`` unless it differed) and the
    changes, each ``{"rule", "item", "code", "change"}``; ``failed`` when the
    candidate could not be evaluated."""

    service: str
    active: str
    active_sha256: str
    candidate: str
    candidate_sha256: str
    at: datetime
    run: str
    patient: str | None = None
    changes: tuple[Mapping[str, str], ...] = ()
    failed: bool = False
    dropped: int = 0


@dataclass
class _Job:
    kind: str  # "cards", "call", "feedback", "shadow"
    args: tuple[Any, ...]
    done: Future[Any] | None = None
    rows: int = 1


@dataclass
class _Counts:
    written: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    unknown_cards: int = 0


class Store:
    """The store (a file or a PostgreSQL URL), opened and checked at start
    (:class:`ServiceConfigError` when it cannot be used), and its writer
    thread. ``on_error(operation)`` is told of every failed operation
    (``write``, ``replay``, ``ping``, ``prune``) and ``on_drop(kind, rows)``
    of work dropped because the queue was full (the metrics count them)."""

    def __init__(self, location: Location, *, card_days: int = 30, keep_days: int = 400,
                 max_pending: int = 10_000, comments: bool = True,
                 pool_size: int = 8, timeout: float = 5.0) -> None:
        self.location = location
        self.card_days = card_days
        self.keep_days = keep_days
        self.comments = comments
        self.counts = _Counts()
        self.on_error: Callable[[str], None] | None = None
        self.on_drop: Callable[[str, int], None] | None = None
        #: Told of each feedback entry once committed: (service, rules or None, outcome).
        self.on_feedback: Callable[[str, tuple[str, ...] | None, str], None] | None = None
        self._feedback_seen: list[tuple[str, tuple[str, ...] | None, str]] = []
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_drop_log = 0.0
        self._dropped_unlogged: Counter[str] = Counter()
        field_name = "store"
        try:
            self.backend = _backend(location, pool_size=pool_size, timeout=timeout)
        except StoreError as exc:
            raise ServiceConfigError(str(exc), field=field_name) from None
        self.where = self.backend.where
        try:
            self._init()
        except BaseException:
            self.backend.close()
            raise

    @property
    def path(self) -> Path | None:
        """The file of a SQLite store (``None`` for PostgreSQL)."""
        return self.backend.path if isinstance(self.backend, SqliteBackend) else None

    @property
    def shared(self) -> bool:
        """Whether other hosts can share the store (PostgreSQL)."""
        return isinstance(self.backend, PostgresBackend)

    # -- start ------------------------------------------------------------- #
    def _init(self) -> None:
        field_name = "store"
        backend = self.backend
        if isinstance(backend, SqliteBackend):
            try:
                backend.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ServiceConfigError(f"cannot create the store's folder "
                                         f"{backend.path.parent}: {exc.strerror}",
                                         field=field_name) from None
        try:
            _, version = migrate(backend, create_only=True)
            if version != SCHEMA_VERSION:
                raise ServiceConfigError(
                    f"the store {self.where} has schema version {version}; this cdss "
                    f"writes version {SCHEMA_VERSION}: run 'cdss store migrate --store "
                    f"{self.where}' first", field=field_name)
            conn = backend.connect()
            try:
                self._prune(conn)
            finally:
                conn.close()
        except StoreError as exc:
            raise ServiceConfigError(str(exc), field=field_name) from None
        except backend.errors() as exc:
            raise ServiceConfigError(f"the store {self.where} cannot be used: "
                                     f"{type(exc).__name__}: {_first_line(exc)}",
                                     field=field_name) from None

    def start(self) -> None:
        """Start the writer thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="cdss-store",
                                                daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread and close the
        connections (blocking: call it off the event loop)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=timeout)
            self._log_drops(force=True)
        self.backend.close()

    def _failed(self, operation: str) -> None:
        if self.on_error is not None:
            self.on_error(operation)

    # -- what the service calls (never blocking) ------------------------------ #
    def _put(self, job: _Job) -> bool:
        self.start()
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self.counts.dropped[job.kind] += job.rows
            self._dropped_unlogged[job.kind] += job.rows
            if self.on_drop is not None:
                self.on_drop(job.kind, job.rows)
            self._log_drops()
            return False

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._dropped_unlogged and (force or now - self._last_drop_log >= _DROP_LOG_EVERY):
            self._last_drop_log = now
            emit(logging.ERROR, {"event": "store queue full", "lost": dict(self._dropped_unlogged),
                                  "lost_total": dict(self.counts.dropped)})
            self._dropped_unlogged.clear()

    def record_cards(self, service: str, ruleset: str, sha256: str,
                     cards: Sequence[IssuedCard], at: datetime | None = None) -> bool:
        """Note the cards one answer issued (uuid → kind, rules) and count them
        as shown, per rule; False when the queue was full (counted, logged)."""
        if not cards:
            return True
        return self._put(_Job("cards", (service, ruleset, sha256, tuple(cards), at or _now()),
                              rows=len(cards)))

    def record_call(self, service: str, ruleset: str, sha256: str, rules: Sequence[str],
                    unmapped: Sequence[tuple[str, str]] = (), at: datetime | None = None) -> bool:
        """Count one call answered (with or without cards), the rules whose
        cards it issued (each once) and the codes (system, code) no concept
        mapped in its data (each once): what ``cdss monitor`` needs for a
        firing rate per call. False when the queue was full (counted, logged)."""
        return self._put(_Job("call", (service, ruleset, sha256, tuple(sorted(set(rules))),
                                       tuple(sorted(set(unmapped))), at or _now())))

    def record_shadow(self, call: ShadowCall) -> bool:
        """Note one shadow evaluation (and the rows of its differences)."""
        return self._put(_Job("shadow", (call,)))

    def record_feedback(self, service: str, entries: Sequence[Any]) -> Future[int]:
        """Store feedback entries (:class:`~cdss.hooks.FeedbackRequest` items),
        each tied to the card's rules when the card is known; the future gives
        how many named an unknown card, or the error that kept them out."""
        done: Future[int] = Future()
        at = _now()
        if not self._put(_Job("feedback", (service, tuple(entries), at), done, len(entries))):
            done.set_exception(StoreError("the store's queue is full"))
        return done

    # -- what the service calls and waits for (blocking: off the event loop) ---- #
    def remember(self, key: tuple[str, str], until: float, now: float | None = None) -> bool:
        """Record the token ``key`` (issuer, jti) until ``until`` (epoch
        seconds) with one insert on its unique key; ``False`` when an unexpired
        entry holds it already (a replay), from this process or any other.
        :class:`StoreError` when the store cannot answer: the caller must then
        refuse the token (fail closed)."""
        moment = time.time() if now is None else now
        try:
            conn = self.backend.connect()
            try:
                rows = conn.execute(
                    "INSERT INTO replay (token, until) VALUES (?, ?) ON CONFLICT (token) "
                    "DO UPDATE SET until = excluded.until WHERE replay.until < ? RETURNING 1",
                    (replay_key(*key), until, moment)).fetchall()
            finally:
                conn.close()
        except self.backend.errors() as exc:
            self._failed("replay")
            emit(logging.ERROR, {"event": "store unreachable", "operation": "replay",
                                  "error": type(exc).__name__})
            raise StoreError("the store did not answer the replay check") from None
        return bool(rows)

    def ping(self) -> bool:
        """Whether the store answers a query now (readiness)."""
        try:
            conn = self.backend.connect()
            try:
                conn.execute("SELECT 1").fetchall()
            finally:
                conn.close()
            return True
        except self.backend.errors():
            self._failed("ping")
            return False

    # -- the writer thread --------------------------------------------------- #
    def _write_loop(self) -> None:
        last_prune = last_replay = time.monotonic()
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < 500:  # one transaction for what has piled up
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._write(batch)
            now = time.monotonic()
            if now - last_replay >= _PRUNE_REPLAY_EVERY or now - last_prune >= _PRUNE_EVERY:
                full = now - last_prune >= _PRUNE_EVERY
                last_replay = now
                last_prune = now if full else last_prune
                self._prune_now(full)

    def _prune_now(self, full: bool) -> None:
        try:
            conn = self.backend.connect()
            try:
                if full:
                    self._prune(conn)
                else:
                    conn.execute("DELETE FROM replay WHERE until < ?", (time.time(),))
            finally:
                conn.close()
        except self.backend.errors() as exc:
            self._failed("prune")
            log_failure(exc, "store prune")

    def _write(self, batch: list[_Job]) -> None:
        results: list[Any] = []
        try:
            conn = self.backend.connect()
            try:
                with self.backend.transaction(conn):
                    for job in batch:
                        results.append(getattr(self, f"_write_{job.kind}")(conn, *job.args))
            finally:
                conn.close()
        except Exception as exc:
            results.clear()
            self._feedback_seen.clear()
            lost = Counter[str]()
            for job in batch:
                lost[job.kind] += job.rows
                self.counts.failed[job.kind] += job.rows
                if job.done is not None:
                    job.done.set_exception(StoreError("the store could not write"))
            self._failed("write")
            log_failure(exc, "store write")
            emit(logging.ERROR, {"event": "store write failed", "lost": dict(lost),
                                  "lost_total": dict(self.counts.failed)})
            return
        seen, self._feedback_seen = self._feedback_seen, []
        if self.on_feedback is not None:
            for item in seen:
                self.on_feedback(*item)
        for job, result in zip(batch, results, strict=True):
            self.counts.written[job.kind] += job.rows
            if job.done is not None:
                job.done.set_result(result)

    def _write_cards(self, conn: Connection, service: str, ruleset: str, sha256: str,
                     cards: tuple[IssuedCard, ...], at: datetime) -> None:
        issued = _iso(at)
        conn.executemany(
            "INSERT INTO issued_cards VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (service, card) DO UPDATE SET ruleset = excluded.ruleset, "
            "sha256 = excluded.sha256, kind = excluded.kind, rules = excluded.rules, "
            "issued_at = excluded.issued_at",
            [(service, c.uuid, ruleset, sha256, c.kind, orjson.dumps(list(c.rules)).decode(),
              issued) for c in cards])
        shown = Counter((rule, c.kind) for c in cards for rule in (c.rules or (NO_RULE,)))
        conn.executemany(
            "INSERT INTO cards_shown VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hour, service, ruleset, rule, kind) "
            "DO UPDATE SET cards = cards_shown.cards + excluded.cards",
            [(hour_of(at), service, ruleset, rule, kind, n) for (rule, kind), n in shown.items()])

    def _write_call(self, conn: Connection, service: str, ruleset: str, sha256: str,
                    rules: tuple[str, ...], unmapped: tuple[tuple[str, str], ...],
                    at: datetime) -> None:
        hour = hour_of(at)
        conn.execute(
            "INSERT INTO service_calls VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (hour, service, ruleset, sha256) "
            "DO UPDATE SET calls = service_calls.calls + 1", (hour, service, ruleset, sha256))
        if rules:
            conn.executemany(
                "INSERT INTO rule_calls VALUES (?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (hour, service, ruleset, sha256, rule) "
                "DO UPDATE SET calls = rule_calls.calls + 1",
                [(hour, service, ruleset, sha256, rule) for rule in rules])
        if unmapped:
            conn.executemany(
                "INSERT INTO unmapped_codes VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT (hour, service, system, code) "
                "DO UPDATE SET calls = unmapped_codes.calls + 1",
                [(hour, service, system, code) for system, code in unmapped])

    def _write_feedback(self, conn: Connection, service: str, entries: tuple[Any, ...],
                        at: datetime) -> int:
        unknown = 0
        for entry in entries:
            found = conn.execute("SELECT ruleset, sha256, kind, rules FROM issued_cards "
                                 "WHERE service = ? AND card = ?",
                                 (service, entry.card)).fetchone()
            if found is None:
                unknown += 1
            self._feedback_seen.append(
                (service, None if found is None else tuple(orjson.loads(found[3])),
                 entry.outcome))
            reason = entry.overrideReason
            coding = reason.reason if reason is not None else None
            comment = reason.userComment if reason is not None else None
            conn.execute(
                "INSERT INTO feedback (service, card, ruleset, sha256, kind, rules, "
                "outcome, outcome_at, received_at, reason_system, reason_code, reason_display, "
                "has_comment, comment, accepted_suggestions) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (service, entry.card, *(found or (None, None, None, None)), entry.outcome,
                 _iso(entry.outcomeTimestamp if entry.outcomeTimestamp.tzinfo
                      else entry.outcomeTimestamp.replace(tzinfo=timezone.utc)),
                 _iso(at), coding.system if coding else None, coding.code if coding else None,
                 coding.display if coding else None, int(bool(comment)),
                 comment if comment and self.comments else None,
                 len(entry.acceptedSuggestions or ())))
        self.counts.unknown_cards += unknown
        return unknown

    def _write_sync(self, conn: Connection) -> None:
        return None

    def _write_shadow(self, conn: Connection, call: ShadowCall) -> None:
        differing = bool(call.changes)
        conn.execute(
            "INSERT INTO shadow_calls VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hour, service, active, candidate) DO UPDATE SET "
            "calls = shadow_calls.calls + excluded.calls, "
            "differing = shadow_calls.differing + excluded.differing, "
            "failed = shadow_calls.failed + excluded.failed, "
            "dropped = shadow_calls.dropped + excluded.dropped",
            (hour_of(call.at), call.service, call.active, call.candidate,
             int(not call.failed and not call.dropped), int(differing), int(call.failed),
             call.dropped))
        if not differing:
            return
        difference = conn.execute(
            "INSERT INTO shadow_differences (hour, service, active, active_sha256, candidate, "
            "candidate_sha256, run, patient, changes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (hour_of(call.at), call.service, call.active, call.active_sha256, call.candidate,
             call.candidate_sha256, call.run, call.patient,
             orjson.dumps(list(call.changes), option=orjson.OPT_SORT_KEYS).decode())
        ).fetchall()[0][0]
        conn.executemany("INSERT INTO shadow_rule_changes VALUES (?, ?, ?, ?, ?)",
                         [(difference, c["rule"], c["item"], c["code"], c["change"])
                          for c in call.changes])

    def _prune(self, conn: Connection) -> None:
        now = _now()
        cards_before = _iso(now - timedelta(days=self.card_days))
        before = _iso(now - timedelta(days=self.keep_days))
        hour_before = hour_of(now - timedelta(days=self.keep_days))
        with self.backend.transaction(conn):
            conn.execute("DELETE FROM issued_cards WHERE issued_at < ?", (cards_before,))
            conn.execute("DELETE FROM feedback WHERE received_at < ?", (before,))
            for table in ("cards_shown", "shadow_calls", "shadow_differences",
                          "service_calls", "rule_calls", "unmapped_codes"):
                conn.execute(f"DELETE FROM {table} WHERE hour < ?", (hour_before,))
            conn.execute("DELETE FROM replay WHERE until < ?", (time.time(),))

    def flushed(self, timeout: float = 10.0) -> bool:
        """Wait (blocking) until what was queued before this call is written; for tests."""
        done: Future[int] = Future()
        if not self._put(_Job("sync", (), done, 0)):
            return False
        try:
            done.result(timeout=timeout)
            return True
        except Exception:
            return False


# --------------------------------------------------------------------------- #
# Reading: the reports
# --------------------------------------------------------------------------- #
@contextmanager
def read_store(location: Location) -> Iterator[Connection]:
    """A connection to the store at ``location`` (a file, opened read-only,
    or a ``postgresql://`` URL); :class:`~cdss.errors.StoreError` when it is
    missing, unreachable, not a store, or of another schema version."""
    if not is_url(location) and "://" not in str(location):
        file = Path(location)
        if not file.is_file():
            raise StoreError(f"no store file {file}")
    try:
        backend = _backend(location, pool_size=1)
    except StoreError:
        raise
    except CDSSError as exc:
        raise StoreError(str(exc)) from None
    where = backend.where
    try:
        try:
            conn = backend.connect(read_only=True)
        except backend.errors() as exc:
            raise StoreError(f"{where} cannot be read: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
        try:
            try:
                version = backend.version(conn)
            except backend.errors() as exc:
                raise StoreError(f"{where} is not a store: {_first_line(exc)}") from None
            if version is None:
                raise StoreError(f"{where} is not a store (it has no schema_version)")
            if version != SCHEMA_VERSION:
                raise StoreError(f"{where} has schema version {version}; this cdss reads "
                                 f"version {SCHEMA_VERSION} (cdss store migrate)")
            yield conn
        finally:
            conn.close()
    finally:
        backend.close()


def _bounds(column: str, since: datetime | None,
            until: datetime | None) -> tuple[str, list[str]]:
    """A WHERE clause on ``column`` for [since, until). Hourly counts are kept
    under the start of their hour, so an hour counts when it starts in the period."""
    clauses, args = [], []
    if since is not None:
        clauses.append(f"{column} >= ?")
        args.append(_iso(since))
    if until is not None:
        clauses.append(f"{column} < ?")
        args.append(_iso(until))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _rules(text: str | None) -> list[str | None]:
    """The rules of a feedback row: ``[None]`` for an unknown card."""
    if text is None:
        return [None]
    rules = orjson.loads(text)
    return rules if rules else [NO_RULE]


def feedback_report(path: str | Path, *, since: datetime | None = None,
                    until: datetime | None = None, comments: bool = False) -> dict[str, Any]:
    """Per ruleset version and rule: cards shown, feedback accepted and
    overridden, override reasons (by code and display) and the comments' count
    (their text too with ``comments``), and the acceptance rate (accepted over
    accepted and overridden). Feedback on a card the store does not know is
    counted under ruleset and rule ``None``."""
    rows: dict[tuple[str | None, str | None], dict[str, Any]] = {}

    def row(ruleset: str | None, rule: str | None) -> dict[str, Any]:
        return rows.setdefault((ruleset, rule), {
            "ruleset": ruleset, "rule": rule, "shown": 0, "accepted": 0, "overridden": 0,
            "reasons": Counter(), "comments": 0, "comment_texts": []})

    with read_store(path) as conn:
        where, args = _bounds("hour", since, until)
        for ruleset, rule, cards in conn.execute(
                f"SELECT ruleset, rule, sum(cards) FROM cards_shown{where} "
                "GROUP BY ruleset, rule", args):
            row(ruleset, rule)["shown"] += cards
        where, args = _bounds("outcome_at", since, until)
        for ruleset, rules, outcome, code, display, has_comment, comment in conn.execute(
                "SELECT ruleset, rules, outcome, reason_code, reason_display, has_comment, "
                f"comment FROM feedback{where} ORDER BY outcome_at", args):
            for rule in _rules(rules):
                r = row(ruleset, rule)
                r[outcome] += 1
                if code is not None:
                    r["reasons"][(code, display)] += 1
                r["comments"] += has_comment
                if comments and comment:
                    r["comment_texts"].append(comment)
    out = []
    for _, r in sorted(rows.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or "",
                                                     kv[0][1] or "")):
        answered = r["accepted"] + r["overridden"]
        item = {**r, "acceptance_rate": round(r["accepted"] / answered, 4) if answered else None,
                "reasons": [{"code": c, "display": d, "count": n}
                            for (c, d), n in sorted(r["reasons"].items(),
                                                    key=lambda kv: (-kv[1], kv[0][0]))]}
        if not comments:
            del item["comment_texts"]
        out.append(item)
    return {"since": _iso(since) if since else None, "until": _iso(until) if until else None,
            "rules": out}


def shadow_report(path: str | Path, *, since: datetime | None = None,
                  until: datetime | None = None) -> dict[str, Any]:
    """Per service and pair of versions: the calls evaluated with the
    candidate, how many differed, failed or were dropped (queue full), the
    distinct patients that differed (salted hashes, distinct within a service
    run and summed over runs), and per rule the items and cards gained, lost
    or changed."""
    pairs: dict[tuple[str, str, str], dict[str, Any]] = {}

    def pair(service: str, active: str, candidate: str) -> dict[str, Any]:
        return pairs.setdefault((service, active, candidate), {
            "service": service, "active": active, "candidate": candidate, "calls": 0,
            "differing": 0, "failed": 0, "dropped": 0, "patients_differing": 0, "rules": {}})

    with read_store(path) as conn:
        where, args = _bounds("hour", since, until)
        for service, active, candidate, calls, differing, failed, dropped in conn.execute(
                "SELECT service, active, candidate, sum(calls), sum(differing), sum(failed), "
                f"sum(dropped) FROM shadow_calls{where} "
                "GROUP BY service, active, candidate", args):
            p = pair(service, active, candidate)
            p.update(calls=calls, differing=differing, failed=failed, dropped=dropped)
        for service, active, candidate, patients in conn.execute(
                "SELECT service, active, candidate, count(DISTINCT run || ':' || patient) "
                f"FROM shadow_differences{where} "
                "GROUP BY service, active, candidate", args):
            pair(service, active, candidate)["patients_differing"] = patients
        where_d = where.replace("hour", "d.hour")
        for service, active, candidate, rule, item, change, n in conn.execute(
                "SELECT d.service, d.active, d.candidate, c.rule, c.item, c.change, count(*) "
                "FROM shadow_rule_changes c JOIN shadow_differences d "
                f"ON d.id = c.difference{where_d} "
                "GROUP BY d.service, d.active, d.candidate, c.rule, c.item, c.change", args):
            rules = pair(service, active, candidate)["rules"]
            r = rules.setdefault(rule, {"rule": rule, "gained": 0, "lost": 0, "changed": 0,
                                        "by_item": {}})
            r[change] += n
            r["by_item"].setdefault(item, Counter())[change] += n
    out = []
    for key in sorted(pairs):
        p = pairs[key]
        p["rules"] = [{**r, "by_item": {i: dict(c) for i, c in sorted(r["by_item"].items())}}
                      for _, r in sorted(p["rules"].items())]
        out.append(p)
    return {"since": _iso(since) if since else None, "until": _iso(until) if until else None,
            "services": out}



def open_store(config: Any, location: Location | None = None) -> Store | None:
    """The store a :class:`~cdss.service.StoreConfig` (or ``None``) names,
    ``location`` (a file or a ``postgresql://`` URL) overriding its own (and
    turning the store on); ``None`` when neither asks for one."""
    if config is None and location is None:
        return None
    settings = {} if config is None else config.model_dump()
    where: Location
    if location is not None:
        where = location if is_url(location) else Path(location)
    elif settings.get("url"):
        where = settings["url"]
    else:
        where = Path(settings["path"]) if settings.get("path") else default_store_path()
    return Store(where, card_days=settings.get("card_days", 30),
                 keep_days=settings.get("keep_days", 400),
                 max_pending=settings.get("max_pending", 10_000),
                 comments=settings.get("comments", True),
                 pool_size=settings.get("pool_size", 8),
                 timeout=settings.get("timeout_seconds", 5.0))
