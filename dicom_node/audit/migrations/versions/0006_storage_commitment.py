"""Storage commitment: the open request of a delivery (transaction UID, time, count) and when it was committed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("commit_uid", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("commit_requested_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("commit_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("committed_at", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_commit_uid"), ["commit_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_commit_uid"))
        for column in ("committed_at", "commit_attempts", "commit_requested_at", "commit_uid"):
            batch_op.drop_column(column)
