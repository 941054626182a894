"""Fixtures of the monitoring tests: a fresh PostgreSQL schema per test."""

from tests.support.postgres import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]
