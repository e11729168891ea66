"""The Alembic migrations are the schema: autogenerate against a migrated
database must find nothing to change, on PostgreSQL and on SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app import migrate
from app.core.db import make_engine
from app.core.orm import Base


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_postgres_schema_matches_orm(pg_url: str) -> None:
    migrate.upgrade(pg_url)
    assert _diff(pg_url) == []
    engine = make_engine(pg_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_sqlite_schema_matches_orm_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    migrate.upgrade(url)
    assert _diff(url) == []
    command.downgrade(migrate.alembic_config(url), "base")
    assert _diff(url) != []  # the tables are gone again
    migrate.upgrade(url)
    assert _diff(url) == []


def test_orm_change_would_be_detected(tmp_path: Path) -> None:
    """Guard the guard: a column missing from the database shows up as a diff."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'g.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE datasets DROP COLUMN sha256"))
    engine.dispose()
    diffs = _diff(url)
    assert any(d[0] == "add_column" and d[3].name == "sha256" for d in diffs), diffs


def test_every_table_is_created_by_migrations(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 't.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"principals", "api_keys", "datasets", "jobs", "artifacts", "alembic_version"} == tables
