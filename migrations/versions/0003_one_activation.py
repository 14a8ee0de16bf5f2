"""At most one activation job queued or running: a partial unique index on ``jobs``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_jobs_one_activation"
WHERE = "kind = 'activate' AND status IN ('queued', 'running')"


def upgrade() -> None:
    # Before the index existed two requests could both queue an activation: keep the oldest, cancel the rest.
    op.execute(
        sa.text(
            f"UPDATE jobs SET status = 'cancelled' WHERE {WHERE} AND id <> (SELECT MIN(id) FROM jobs WHERE {WHERE})"
        )
    )
    op.create_index(INDEX, "jobs", ["kind"], unique=True, sqlite_where=sa.text(WHERE), postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobs")
