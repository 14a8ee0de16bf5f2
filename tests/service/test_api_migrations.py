"""The Alembic history: upgrade → downgrade → upgrade round-trips, and it matches the models exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

import migrations
from service.migrate import current_revision, downgrade, head_revision, is_current, upgrade
from service.models import Base


def test_upgrade_downgrade_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'metah.db'}"
    assert current_revision(url) is None and not is_current(url)
    upgrade(url)
    upgrade(url)  # idempotent
    assert current_revision(url) == head_revision() and is_current(url)
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= {"images", "codes", "model_versions", "jobs", "changes"}
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(url)
        assert current_revision(url) == head_revision()
    finally:
        engine.dispose()


def test_constraint_names_follow_the_convention() -> None:
    images = Base.metadata.tables["images"]
    names = {c.name for c in images.constraints} | {i.name for i in images.indexes}
    assert {"pk_images", "uq_images_sha256_domain", "ix_images_domain_id"} <= names
    codes = Base.metadata.tables["codes"]
    assert "fk_codes_image_id_images" in {c.name for c in codes.foreign_key_constraints}


def test_the_migrations_package_holds_only_the_schema_history() -> None:
    """The tables are the service's (``service.models``); ``migrations/`` is Alembic's environment and versions."""
    folder = Path(migrations.__file__).parent
    assert {p.name for p in folder.iterdir() if p.name != "__pycache__"} == {
        "__init__.py",
        "env.py",
        "script.py.mako",
        "versions",
    }
    assert "from service.models import Base" in (folder / "env.py").read_text()


def test_the_alembic_command_upgrades_an_empty_and_an_existing_database(tmp_path: Path) -> None:
    """``alembic upgrade head`` with the repository's alembic.ini: env.py imports the service's models, and the
    upgraded schema is what they describe (``alembic check``), from nothing and from an older revision."""
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAH_")}

    def alembic(url: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(repo / "alembic.ini"), *args],
            cwd=repo,
            env={**env, "METAH_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    alembic(empty, "upgrade", "head")
    existing = f"sqlite:///{tmp_path / 'existing.db'}"
    upgrade(existing, "0002")
    alembic(existing, "upgrade", "head")
    for url in (empty, existing):
        assert current_revision(url) == head_revision()
        assert "No new upgrade operations detected" in alembic(url, "check")


def test_upgrade_from_0003_adds_loose_blobs_and_keeps_the_images(tmp_path: Path) -> None:
    """0004 (the blob sweep's ``loose_blobs``) on a database at the previous head, and back."""
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url, "0003")
    engine = create_engine(url)
    columns = "sha256, domain, metadata, media_type, size_bytes, width, height, stored_path, created_at"
    values = f"'{'a' * 64}', 'd', '{{}}', 'image/png', 1, 1, 1, 'k', '2026-12-01'"
    try:
        with engine.begin() as connection:
            connection.execute(text(f"INSERT INTO images ({columns}) VALUES ({values})"))
        assert "loose_blobs" not in inspect(engine).get_table_names()
        upgrade(url)
        assert current_revision(url) == head_revision()
        assert "loose_blobs" in inspect(engine).get_table_names()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT sha256 FROM images")).scalars().all() == ["a" * 64]
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade(url, "0003")
        assert "loose_blobs" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_upgrade_from_0004_adds_the_index_cursors_and_back(tmp_path: Path) -> None:
    """0005 (the Milvus indexer's ``index_cursors``) on a database at 0004, and back."""
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url, "0004")
    engine = create_engine(url)
    try:
        assert "index_cursors" not in inspect(engine).get_table_names()
        upgrade(url)
        assert "index_cursors" in inspect(engine).get_table_names()
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO index_cursors VALUES ('m1', 'ready', 7, 0, '2026-12-01')"))
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade(url, "0004")
        assert "index_cursors" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
