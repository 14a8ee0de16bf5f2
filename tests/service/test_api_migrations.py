"""The Alembic history: upgrade → downgrade → upgrade round-trips, and it matches the models exactly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from migrations.models import Base
from migrations.runner import current_revision, downgrade, head_revision, is_current, upgrade


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
