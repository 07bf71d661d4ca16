"""Reference comparisons under a lease, like jobs and deliveries: ``received_segs.lease_owner`` (the
``host:pid`` comparing it) and ``lease_expires_at`` (then another worker may take it back).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("received_segs") as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("received_segs") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
