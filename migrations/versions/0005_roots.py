"""The roots that ``index`` and ``watch`` were given: the index remembers what it covers.

Why: the catalog knew every file but not which folders it was asked to keep in step with, so
``imgwatch index ~/Pictures`` followed by ``imgwatch reindex`` had to be told the folder again, and
``watch`` without arguments had nothing to watch. A root is remembered when a command uses it and
stays until ``imgwatch forget ROOT``; a folder that went missing is kept (an unplugged disk is not a
request to forget it). Paths are BLOBs of the exact bytes, as in ``files``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "roots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.LargeBinary, nullable=False),
        sa.Column("added_at", sa.DateTime, nullable=False),
        sa.Column("last_used_at", sa.DateTime, nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.UniqueConstraint("path", name="uq_roots_path"),
    )


def downgrade() -> None:
    op.drop_table("roots")
