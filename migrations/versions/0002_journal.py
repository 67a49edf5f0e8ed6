"""Journal of events the daemon has learnt and not yet finished acting on.

Why: the daemon must not lose an event (a filesystem change, a webhook call) to a crash between
learning of it and acting on it. Each event is written here first; it is marked done when its
handler has finished (or when a later event made it moot). On start, the daemon replays every
event not marked done. Done rows are kept for a while for inspection; the maintenance job prunes them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.LargeBinary, nullable=False),
        sa.Column("dest_path", sa.LargeBinary, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("occurred_at", sa.DateTime, nullable=False),
        sa.Column("done_at", sa.DateTime, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_journal_done_at", "journal", ["done_at"])


def downgrade() -> None:
    op.drop_index("ix_journal_done_at", "journal")
    op.drop_table("journal")
