"""Retention: ``instances.pruned_at`` and ``outputs.pruned_at`` mark a file deleted by the retention policy
(the row and its audit trail stay).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 18:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("instances", "outputs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("pruned_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    for table in ("outputs", "instances"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("pruned_at")
