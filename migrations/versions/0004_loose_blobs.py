"""Blobs that may have lost (or not yet gained) their row: ``loose_blobs``, what the blob sweep looks at.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "loose_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("touched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_loose_blobs")),
    )
    op.create_index(op.f("ix_loose_blobs_touched_at"), "loose_blobs", ["touched_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_loose_blobs_touched_at"), table_name="loose_blobs")
    op.drop_table("loose_blobs")
