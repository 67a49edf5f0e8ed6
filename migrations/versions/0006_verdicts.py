"""Verdicts: pairs of files the user said are not duplicates, so they are never grouped again.

Why: a look-alike pass finds burst shots and edits next to real copies, and a user who says "these two
are different photos" must not be asked again after a rename, a move, a rescan, a rebuild or a change
of weights. Every one of those keeps a file's bytes but may change its row, its path and its vector,
so a verdict is keyed by the two content hashes (``files.content_hash``), not by row ids or paths.
The pair is stored ordered (``hash_a < hash_b``) and unique, so one pair has one row whichever way
round it was given; ``hash_b`` has an index of its own for "every verdict about this file".

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("hash_a", sa.String(64), nullable=False),
        sa.Column("hash_b", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.UniqueConstraint("hash_a", "hash_b", name="uq_verdicts_pair"),
        sa.CheckConstraint("hash_a < hash_b", name="ck_verdicts_ordered"),
    )
    op.create_index("ix_verdicts_hash_b", "verdicts", ["hash_b"])


def downgrade() -> None:
    op.drop_index("ix_verdicts_hash_b", "verdicts")
    op.drop_table("verdicts")
