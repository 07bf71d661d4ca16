"""Per-route flip agreement: ``jobs.flip_agreement`` keeps the route's choice of the mirror-image pass
(NULL: the node's ``flip_agreement`` setting, as for every job before this revision).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("flip_agreement", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("flip_agreement")
