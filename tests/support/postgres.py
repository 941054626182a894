"""A fresh PostgreSQL schema per test, on the server at 127.0.0.1:5432 (trust
authentication, database ``test``, user ``postgres``; ``CDSS_TEST_POSTGRES``
names another). A server that cannot be reached fails the test with what to
start; it never skips."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

#: The test database (override with CDSS_TEST_POSTGRES).
SERVER = os.environ.get("CDSS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _connect() -> psycopg.Connection:
    try:
        return psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {SERVER} ({exc}); start it "
                    "(e.g. pg_ctlcluster 15 main start) or set CDSS_TEST_POSTGRES",
                    pytrace=False)


def url_in(schema: str) -> str:
    """The server's URL with ``schema`` as its search path."""
    return f"{SERVER}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh, empty schema's name, dropped after the test."""
    schema = f"cdss_test_{secrets.token_hex(6)}"
    conn = _connect()
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.close()


@pytest.fixture
def pg_url(pg_schema: str) -> str:
    """The URL of a store in a fresh schema."""
    return url_in(pg_schema)


def drop_schema(schema: str) -> None:
    """Drop ``schema`` now (a store that stops answering)."""
    conn = _connect()
    try:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        conn.close()
