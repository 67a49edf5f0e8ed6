"""Runs of the daemon's maintenance jobs (compaction, reconcile).

Why: `imgwatch status` must say when each job last ran, how long it took, what it did and whether
it failed, across restarts; the catalog is where the daemon's state lives.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_job_runs_job", "job_runs", ["job"])


def downgrade() -> None:
    op.drop_index("ix_job_runs_job", "job_runs")
    op.drop_table("job_runs")
