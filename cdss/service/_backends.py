"""The store's two backends: SQLite (one file, the embedded default) and
PostgreSQL (shared by every process and replica; extra ``postgresql``:
psycopg 3 and psycopg_pool). Both hold the same schema, written by the same
versioned migrations, through the same small connection interface, so that
the store and its reports are written once.

SQL is written once with ``?`` placeholders and the syntax both understand
(``INSERT ... ON CONFLICT``, ``RETURNING``); only the DDL differs, by a few
types. A location is a file path or a ``postgresql://`` URL (whose password,
if any, is never shown: :func:`shown` gives what logs and errors may name).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from cdss.errors import DependencyError, StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Backend", "Connection", "PostgresBackend",
           "SqliteBackend", "backend_for", "is_url", "shown"]

#: The migrations, in order: (version, DDL with ``{id}`` for an auto-numbered
#: key and ``{real}`` for a float column).
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
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
    id {id}, service TEXT NOT NULL, card TEXT NOT NULL,
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
    id {id}, hour TEXT NOT NULL, service TEXT NOT NULL,
    active TEXT NOT NULL, active_sha256 TEXT NOT NULL,
    candidate TEXT NOT NULL, candidate_sha256 TEXT NOT NULL,
    run TEXT NOT NULL, patient TEXT, changes TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS shadow_differences_hour ON shadow_differences (hour);
CREATE TABLE IF NOT EXISTS shadow_rule_changes (
    difference INTEGER NOT NULL REFERENCES shadow_differences (id) ON DELETE CASCADE,
    rule TEXT NOT NULL, item TEXT NOT NULL, code TEXT NOT NULL, change TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS shadow_rule_changes_difference ON shadow_rule_changes (difference);
"""),
    # the replay cache: a hash of (issuer, jti), never the jti, kept until the token expires
    (2, """
CREATE TABLE IF NOT EXISTS replay (
    token TEXT NOT NULL PRIMARY KEY, until {real} NOT NULL);
CREATE INDEX IF NOT EXISTS replay_until ON replay (until);
"""),
    # what per-rule monitoring needs (cdss monitor): the calls answered per hour (the
    # denominator of a firing rate), the calls in which each rule's cards were issued, and
    # the codes no concept mapped, counted per call; codes and counts, never a patient
    (3, """
CREATE TABLE IF NOT EXISTS service_calls (
    hour TEXT NOT NULL, service TEXT NOT NULL, ruleset TEXT NOT NULL, sha256 TEXT NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (hour, service, ruleset, sha256));
CREATE TABLE IF NOT EXISTS rule_calls (
    hour TEXT NOT NULL, service TEXT NOT NULL, ruleset TEXT NOT NULL, sha256 TEXT NOT NULL,
    rule TEXT NOT NULL, calls INTEGER NOT NULL,
    PRIMARY KEY (hour, service, ruleset, sha256, rule));
CREATE TABLE IF NOT EXISTS unmapped_codes (
    hour TEXT NOT NULL, service TEXT NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (hour, service, system, code));
"""),
)
#: The schema version this cdss writes and reads.
SCHEMA_VERSION = MIGRATIONS[-1][0]
_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
#: A constant key for PostgreSQL's advisory lock held while migrating.
_MIGRATE_LOCK = 0x0CD55


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names a PostgreSQL database rather than a file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def shown(location: str | Path) -> str:
    """``location`` as logs and errors may show it: a URL without its password."""
    if not is_url(location):
        return str(location)
    parts = urlsplit(str(location))
    if parts.password is None:
        return str(location)
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=netloc[0].split(":", 1)[0] + ":***@" + netloc[1]))


class Connection(Protocol):
    """What the store needs of a connection (autocommit; transactions by
    :meth:`Backend.transaction`)."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """A kind of database, at one location."""

    kind: str
    where: str

    def connect(self, *, read_only: bool = False) -> Connection: ...

    def transaction(self, conn: Connection) -> Any: ...

    def version(self, conn: Connection) -> int | None: ...

    def ddl(self, text: str) -> list[str]: ...

    def lock_for_migration(self, conn: Connection) -> None: ...

    def errors(self) -> tuple[type[BaseException], ...]: ...

    def close(self) -> None: ...


@contextmanager
def _transaction(conn: Connection, begin: str) -> Iterator[Connection]:
    conn.execute(begin)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(text: str, **types: str) -> list[str]:
    return [s.strip() for s in text.format(**types).split(";") if s.strip()]


class SqliteBackend:
    """One SQLite file in WAL mode: every process of one host may open it;
    writes take the file's lock (``BEGIN IMMEDIATE``) for their transaction."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connect(self, *, read_only: bool = False) -> Connection:
        """A connection for this thread, kept open for its next work (closing
        it is a no-op; :meth:`close` closes them all); a read-only connection
        is new, and the caller closes it."""
        if read_only:
            return self._open_connection(read_only=True)
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open_connection()
            self._local.conn = conn
            with self._lock:
                self._open.append(conn)
        return _Kept(conn)

    def _open_connection(self, *, read_only: bool = False) -> sqlite3.Connection:
        """A connection, set up; closed again when setting it up fails (a file
        that is not a database fails at the first statement)."""
        if read_only:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=10, isolation_level=None)
        else:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
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

    def transaction(self, conn: Connection) -> Any:
        return _transaction(conn, "BEGIN IMMEDIATE")

    def version(self, conn: Connection) -> int | None:
        tables = {row[0] for row in
                  conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            return None
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] if row else None

    def ddl(self, text: str) -> list[str]:
        return _statements(text, id="INTEGER PRIMARY KEY", real="REAL")

    def lock_for_migration(self, conn: Connection) -> None:
        return None  # BEGIN IMMEDIATE holds the file's write lock already

    def errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def close(self) -> None:
        with self._lock:
            kept, self._open = self._open, []
        for conn in kept:
            conn.close()
        self._local = threading.local()


class _Kept:
    """A thread's SQLite connection, lent: :meth:`close` leaves it open."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return self._conn.executemany(sql, rows)

    def close(self) -> None:
        return None


class _PgConnection:
    """A psycopg connection taken from the pool, with ``?`` placeholders."""

    def __init__(self, conn: Any, give_back: Any) -> None:
        self._conn = conn
        self._give_back = give_back

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), tuple(args) or None)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        with self._conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._give_back(conn)


class PostgresBackend:
    """A PostgreSQL database, through a pool of connections (psycopg_pool):
    a connection is taken for each piece of work and given back. The schema
    is the URL's ``search_path`` (``?options=-csearch_path%3Dname``) or the
    user's default. Connecting and statements are bounded in time, so that an
    unreachable server is an error within seconds, never a hang."""

    kind = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 8, timeout: float = 5.0) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as exc:
            raise DependencyError(
                f"a PostgreSQL store needs psycopg 3 and psycopg_pool: "
                f"pip install 'cdss-fhir[postgresql]' ({exc})", package="psycopg") from None
        self.url = url
        self.where = shown(url)
        self.timeout = timeout
        self._psycopg = psycopg
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            raise StoreError(f"the store URL {self.where} cannot be read") from None
        # the URL's own options (a search_path) kept, a statement timeout added
        params["options"] = (f"{params.get('options') or ''} "
                             f"-c statement_timeout={int(timeout * 1000)}").strip()
        params.setdefault("connect_timeout", max(1, round(timeout)))
        params.setdefault("application_name", "cdss")
        self._pool = psycopg_pool.ConnectionPool(
            psycopg.conninfo.make_conninfo("", **params), min_size=0, max_size=pool_size,
            open=True, timeout=timeout, kwargs={"autocommit": True},
            reconnect_timeout=timeout, name="cdss-store")

    def connect(self, *, read_only: bool = False) -> Connection:
        conn = self._pool.getconn(timeout=self.timeout)
        return _PgConnection(conn, self._give_back)

    def _give_back(self, conn: Any) -> None:
        self._pool.putconn(conn)

    def transaction(self, conn: Connection) -> Any:
        return _transaction(conn, "BEGIN")

    def version(self, conn: Connection) -> int | None:
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return None
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] if row else None

    def ddl(self, text: str) -> list[str]:
        return _statements(text, id="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                           real="DOUBLE PRECISION")

    def lock_for_migration(self, conn: Connection) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))

    def errors(self) -> tuple[type[BaseException], ...]:
        import psycopg_pool

        return (self._psycopg.Error, psycopg_pool.PoolTimeout)

    def close(self) -> None:
        self._pool.close()


def backend_for(location: str | Path, *, pool_size: int = 8,
                timeout: float = 5.0) -> SqliteBackend | PostgresBackend:
    """The backend of ``location``: a ``postgresql://`` URL or a file path."""
    if is_url(location):
        return PostgresBackend(str(location), pool_size=pool_size, timeout=timeout)
    if isinstance(location, str) and "://" in location:
        raise StoreError(f"a store is a file path or a postgresql:// URL, not "
                         f"{location.split('://', 1)[0]}://...")
    return SqliteBackend(Path(location))


def migrate(backend: SqliteBackend | PostgresBackend, *,
            create_only: bool = False) -> tuple[int | None, int]:
    """Bring the store to :data:`SCHEMA_VERSION`, one migration per
    transaction, under a lock so that processes starting together migrate it
    once; the version found and the version now. With ``create_only`` an
    empty store is created but an older one is left as it is.
    :class:`StoreError` for a store newer than this cdss."""
    conn = backend.connect()
    try:
        found: int | None = None
        for index, (version, text) in enumerate(MIGRATIONS):
            with backend.transaction(conn):
                backend.lock_for_migration(conn)
                current = backend.version(conn)
                if index == 0:
                    found = current
                    if current is not None and current > SCHEMA_VERSION:
                        raise StoreError(
                            f"the store {backend.where} has schema version {current}; this "
                            f"cdss knows versions up to {SCHEMA_VERSION}")
                    if create_only and current is not None:
                        return found, current
                if current is not None and current >= version:
                    continue
                conn.execute(_VERSION_TABLE)
                for statement in backend.ddl(text):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        return found, SCHEMA_VERSION
    finally:
        conn.close()
