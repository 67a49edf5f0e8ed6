"""Progress of a shadow reindex: which files already have a vector in the new collection.

Why: changing the extractor (weights, PCA) or the ANN index builds a new Milvus collection beside the
serving one. Its progress must survive a restart (a reindex of 100k photos takes hours), and each
entry remembers the content hash and path it was made for, so a file that changes or moves while the
reindex runs is done again instead of switching over with a stale vector.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reindex_vectors",
        sa.Column("file_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("path", sa.LargeBinary, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("reindex_vectors")
