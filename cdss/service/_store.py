"""The service's store: one SQLite file (WAL) of the cards issued, the
feedback on them, and the differences shadow mode found. No patient data is
written to it: no patient id, no values, no resource ids (see
docs/deploying.md, "The store", for the schema).

One writer thread owns the connection that writes; the event loop only puts
work on its bounded queue (never waiting on disk), except feedback, whose
call waits, off the loop, until its rows are committed, so that a client is
told when its feedback was not stored. Work that finds the queue full, and a
batch whose transaction fails, is counted and logged with what was lost; the
clinical answer never waits for the store and never fails because of it.

Rows are pruned on start and every hour: the map of cards issued after
``card_days``, everything else after ``keep_days``. Reports read the file
with their own read-only connection.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from cdss.errors import ServiceConfigError, StoreError
from cdss.service._logging import emit, log_failure

__all__ = ["DATA_DIR_ENV", "SCHEMA_VERSION", "IssuedCard", "ShadowCall", "Store",
           "default_store_path", "feedback_report", "hour_of", "open_store", "read_store",
           "shadow_report"]

#: The schema the store is written in (the ``schema_version`` table holds it).
SCHEMA_VERSION = 1
#: Environment variable naming the folder of the default store file.
DATA_DIR_ENV = "CDSS_DATA_DIR"
_FILE = "cdss-service.sqlite3"
#: A card with no rule (the left-out warning) is counted under this rule id.
NO_RULE = ""
#: Seconds between prunings while the service runs.
_PRUNE_EVERY = 3600.0
#: Seconds between log lines about work dropped because the queue was full.
_DROP_LOG_EVERY = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS issued_cards (
    service TEXT NOT NULL, card TEXT NOT NULL, ruleset TEXT NOT NULL, sha256 TEXT NOT NULL,
    kind TEXT NOT NULL, rules TEXT NOT NULL, issued_at TEXT NOT NULL,
    PRIMARY KEY (service, card));
CREATE INDEX IF NOT EXISTS issued_cards_at ON issued_cards (issued_at);
CREATE TABLE IF NOT EXISTS cards_shown (
    hour TEXT NOT NULL, service TEXT NOT NULL, ruleset TEXT NOT NULL, rule TEXT NOT NULL,
    kind TEXT NOT NULL, cards INTEGER NOT NULL,
    PRIMARY KEY (hour, service, ruleset, rule, kind));
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, card TEXT NOT NULL,
    ruleset TEXT, sha256 TEXT, kind TEXT, rules TEXT,
    outcome TEXT NOT NULL, outcome_at TEXT NOT NULL, received_at TEXT NOT NULL,
    reason_system TEXT, reason_code TEXT, reason_display TEXT,
    has_comment INTEGER NOT NULL, comment TEXT, accepted_suggestions INTEGER NOT NULL,
    UNIQUE (service, card, outcome, outcome_at));
CREATE INDEX IF NOT EXISTS feedback_at ON feedback (outcome_at);
CREATE TABLE IF NOT EXISTS shadow_calls (
    hour TEXT NOT NULL, service TEXT NOT NULL, active TEXT NOT NULL, candidate TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0, differing INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, service, active, candidate));
CREATE TABLE IF NOT EXISTS shadow_differences (
    id INTEGER PRIMARY KEY, hour TEXT NOT NULL, service TEXT NOT NULL,
    active TEXT NOT NULL, active_sha256 TEXT NOT NULL,
    candidate TEXT NOT NULL, candidate_sha256 TEXT NOT NULL,
    run TEXT NOT NULL, patient TEXT, changes TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS shadow_differences_hour ON shadow_differences (hour);
CREATE TABLE IF NOT EXISTS shadow_rule_changes (
    difference INTEGER NOT NULL REFERENCES shadow_differences (id) ON DELETE CASCADE,
    rule TEXT NOT NULL, item TEXT NOT NULL, code TEXT NOT NULL, change TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS shadow_rule_changes_difference ON shadow_rule_changes (difference);
"""


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


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to ``path``, set up; closed again when setting it up fails
    (a file that is not a database fails at the first statement)."""
    if read_only:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    else:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None,
                               check_same_thread=False)
    try:
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _version(conn: sqlite3.Connection) -> int | None:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" not in tables:
        return None
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] if row else None


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
    kind: str  # "cards", "feedback", "shadow"
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
    """The store file, opened and checked at start (:class:`ServiceConfigError`
    when it cannot be used), and its writer thread."""

    def __init__(self, path: Path, *, card_days: int = 30, keep_days: int = 400,
                 max_pending: int = 10_000, comments: bool = True) -> None:
        self.path = path
        self.card_days = card_days
        self.keep_days = keep_days
        self.comments = comments
        self.counts = _Counts()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_drop_log = 0.0
        self._dropped_unlogged: Counter[str] = Counter()
        self._init()

    # -- start ------------------------------------------------------------- #
    def _init(self) -> None:
        field_name = "store.path"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceConfigError(f"cannot create the store's folder "
                                     f"{self.path.parent}: {exc.strerror}",
                                     field=field_name) from None
        try:
            with closing(_connect(self.path)) as conn:
                version = _version(conn)
                if version is not None and version != SCHEMA_VERSION:
                    raise ServiceConfigError(
                        f"the store {self.path} has schema version {version}; this cdss "
                        f"writes version {SCHEMA_VERSION}", field=field_name)
                conn.executescript(_SCHEMA)
                if version is None:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                self._prune(conn)
        except sqlite3.Error as exc:
            raise ServiceConfigError(f"the store {self.path} cannot be used: "
                                     f"{type(exc).__name__}: {exc}", field=field_name) from None

    def start(self) -> None:
        """Start the writer thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="cdss-store",
                                                daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread (blocking: call it
        off the event loop)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout=timeout)
        self._log_drops(force=True)

    # -- what the service calls (never blocking) ------------------------------ #
    def _put(self, job: _Job) -> bool:
        self.start()
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self.counts.dropped[job.kind] += job.rows
            self._dropped_unlogged[job.kind] += job.rows
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

    # -- the writer thread --------------------------------------------------- #
    def _write_loop(self) -> None:
        try:
            conn = _connect(self.path)
        except sqlite3.Error as exc:  # it opened at start: the disk went away since
            log_failure(exc, "store open")
            conn = None
        last_prune = time.monotonic()
        try:
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
                self._write(conn, batch)
                if conn is not None and time.monotonic() - last_prune >= _PRUNE_EVERY:
                    last_prune = time.monotonic()
                    try:
                        self._prune(conn)
                    except sqlite3.Error as exc:
                        log_failure(exc, "store prune")
        finally:
            if conn is not None:
                conn.close()

    def _write(self, conn: sqlite3.Connection | None, batch: list[_Job]) -> None:
        results: list[Any] = []
        try:
            if conn is None:
                raise sqlite3.OperationalError("the store is not open")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for job in batch:
                    results.append(getattr(self, f"_write_{job.kind}")(conn, *job.args))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            lost = Counter[str]()
            for job in batch:
                lost[job.kind] += job.rows
                self.counts.failed[job.kind] += job.rows
                if job.done is not None:
                    job.done.set_exception(StoreError("the store could not write"))
            log_failure(exc, "store write")
            emit(logging.ERROR, {"event": "store write failed", "lost": dict(lost),
                                  "lost_total": dict(self.counts.failed)})
            return
        for job, result in zip(batch, results, strict=True):
            self.counts.written[job.kind] += job.rows
            if job.done is not None:
                job.done.set_result(result)

    def _write_cards(self, conn: sqlite3.Connection, service: str, ruleset: str, sha256: str,
                     cards: tuple[IssuedCard, ...], at: datetime) -> None:
        issued = _iso(at)
        conn.executemany(
            "INSERT OR REPLACE INTO issued_cards VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(service, c.uuid, ruleset, sha256, c.kind, orjson.dumps(list(c.rules)).decode(),
              issued) for c in cards])
        shown = Counter((rule, c.kind) for c in cards for rule in (c.rules or (NO_RULE,)))
        conn.executemany(
            "INSERT INTO cards_shown VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hour, service, ruleset, rule, kind) "
            "DO UPDATE SET cards = cards + excluded.cards",
            [(hour_of(at), service, ruleset, rule, kind, n) for (rule, kind), n in shown.items()])

    def _write_feedback(self, conn: sqlite3.Connection, service: str, entries: tuple[Any, ...],
                        at: datetime) -> int:
        unknown = 0
        for entry in entries:
            found = conn.execute("SELECT ruleset, sha256, kind, rules FROM issued_cards "
                                 "WHERE service = ? AND card = ?",
                                 (service, entry.card)).fetchone()
            if found is None:
                unknown += 1
            reason = entry.overrideReason
            coding = reason.reason if reason is not None else None
            comment = reason.userComment if reason is not None else None
            conn.execute(
                "INSERT OR IGNORE INTO feedback (service, card, ruleset, sha256, kind, rules, "
                "outcome, outcome_at, received_at, reason_system, reason_code, reason_display, "
                "has_comment, comment, accepted_suggestions) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (service, entry.card, *(found or (None, None, None, None)), entry.outcome,
                 _iso(entry.outcomeTimestamp if entry.outcomeTimestamp.tzinfo
                      else entry.outcomeTimestamp.replace(tzinfo=timezone.utc)),
                 _iso(at), coding.system if coding else None, coding.code if coding else None,
                 coding.display if coding else None, int(bool(comment)),
                 comment if comment and self.comments else None,
                 len(entry.acceptedSuggestions or ())))
        self.counts.unknown_cards += unknown
        return unknown

    def _write_sync(self, conn: sqlite3.Connection) -> None:
        return None

    def _write_shadow(self, conn: sqlite3.Connection, call: ShadowCall) -> None:
        differing = bool(call.changes)
        conn.execute(
            "INSERT INTO shadow_calls VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hour, service, active, candidate) DO UPDATE SET "
            "calls = calls + excluded.calls, differing = differing + excluded.differing, "
            "failed = failed + excluded.failed, dropped = dropped + excluded.dropped",
            (hour_of(call.at), call.service, call.active, call.candidate,
             int(not call.failed and not call.dropped), int(differing), int(call.failed),
             call.dropped))
        if not differing:
            return
        cur = conn.execute(
            "INSERT INTO shadow_differences (hour, service, active, active_sha256, candidate, "
            "candidate_sha256, run, patient, changes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (hour_of(call.at), call.service, call.active, call.active_sha256, call.candidate,
             call.candidate_sha256, call.run, call.patient,
             orjson.dumps(list(call.changes), option=orjson.OPT_SORT_KEYS).decode()))
        conn.executemany("INSERT INTO shadow_rule_changes VALUES (?, ?, ?, ?, ?)",
                         [(cur.lastrowid, c["rule"], c["item"], c["code"], c["change"])
                          for c in call.changes])

    def _prune(self, conn: sqlite3.Connection) -> None:
        now = _now()
        cards_before = _iso(now - timedelta(days=self.card_days))
        before = _iso(now - timedelta(days=self.keep_days))
        hour_before = hour_of(now - timedelta(days=self.keep_days))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM issued_cards WHERE issued_at < ?", (cards_before,))
            conn.execute("DELETE FROM feedback WHERE received_at < ?", (before,))
            for table in ("cards_shown", "shadow_calls", "shadow_differences"):
                conn.execute(f"DELETE FROM {table} WHERE hour < ?", (hour_before,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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
def read_store(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store file ``path``;
    :class:`~cdss.errors.StoreError` when it is missing, not a store, or of
    another schema version."""
    file = Path(path)
    if not file.is_file():
        raise StoreError(f"no store file {file}")
    try:
        conn = _connect(file, read_only=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{file} cannot be read: {exc}") from None
    try:
        try:
            version = _version(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{file} is not a store: {exc}") from None
        if version is None:
            raise StoreError(f"{file} is not a store (it has no schema_version)")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{file} has schema version {version}; this cdss reads "
                             f"version {SCHEMA_VERSION}")
        yield conn
    finally:
        conn.close()


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



def open_store(config: Any, path: str | Path | None = None) -> Store | None:
    """The store a :class:`~cdss.service.StoreConfig` (or ``None``) names,
    ``path`` overriding its file (and turning the store on); ``None`` when
    neither asks for one."""
    if config is None and path is None:
        return None
    settings = {} if config is None else config.model_dump()
    file = Path(path) if path is not None else (
        Path(settings["path"]) if settings.get("path") else default_store_path())
    return Store(file, card_days=settings.get("card_days", 30),
                 keep_days=settings.get("keep_days", 400),
                 max_pending=settings.get("max_pending", 10_000),
                 comments=settings.get("comments", True))
