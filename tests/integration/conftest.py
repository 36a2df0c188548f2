"""Fixtures of the integration tests beyond the shared ones in tests/conftest.py."""

from tests.integration.support.django_example import django_db, postgres_server

__all__ = ["django_db", "postgres_server"]
