"""Fixtures of the service tests."""

from tests.support.postgres import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]
