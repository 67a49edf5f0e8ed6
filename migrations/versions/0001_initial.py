"""Initial catalog: one row per file, and a key/value table for index-wide facts.

Why: the catalog is the daemon's memory. A row exists before any work on the file starts (state
``pending``), so a crash leaves a visible to-do instead of a silent gap; the row id is the file's
Milvus primary key, hence AUTOINCREMENT (SQLite must never hand a deleted file's id to a new one).
Paths are BLOBs holding the exact bytes of the name, so non-UTF-8 names round-trip.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("has_vector", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("signature", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("indexed_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("path", name="uq_files_path"),
        sa.CheckConstraint("state IN ('pending', 'indexed', 'failed')", name="ck_files_state"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_files_content_hash", "files", ["content_hash"])
    op.create_index("ix_files_state", "files", ["state"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_index("ix_files_state", "files")
    op.drop_index("ix_files_content_hash", "files")
    op.drop_table("files")
