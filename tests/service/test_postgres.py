"""PostgreSQL-only checks. The whole HTTP API suite also runs against PostgreSQL (see ``database_url`` in
``tests/service/conftest.py``); this file adds the migrations both ways on a real server.

Needs a PostgreSQL role allowed to create databases (``postgres_admin_url`` in ``tests/service/conftest.py``:
``METAH_TEST_POSTGRES_URL``, or the local cluster). Every test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect

from service.migrate import current_revision, downgrade, head_revision, upgrade
from tests.service.conftest import fresh_postgres_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (skipped where there is no PostgreSQL)."""
    with fresh_postgres_database() as url:
        yield url


def test_migrations_upgrade_and_downgrade_on_postgres(pg_url: str) -> None:
    upgrade(pg_url)
    assert current_revision(pg_url) == head_revision()
    engine = create_engine(pg_url)
    try:
        assert {"images", "codes", "model_versions", "jobs", "changes"} <= set(inspect(engine).get_table_names())
        downgrade(pg_url, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(pg_url)
        assert current_revision(pg_url) == head_revision()
    finally:
        engine.dispose()
