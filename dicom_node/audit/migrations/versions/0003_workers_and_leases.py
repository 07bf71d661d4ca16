"""Workers and leases: who ran each job (host + pid), job and delivery leases for several processes.

``jobs.worker_host``/``worker_pid`` name the process holding (then having run) the job and
``lease_expires_at`` when another worker may reclaim it; every transition names its worker; a
delivery being sent carries its sender (``lease_owner``) and lease.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:36:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("worker_host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("worker_pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_jobs_lease_expires_at", ["lease_expires_at"], unique=False)
    with op.batch_alter_table("job_transitions") as batch_op:
        batch_op.add_column(sa.Column("worker", sa.String(length=300), nullable=True))
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
    with op.batch_alter_table("job_transitions") as batch_op:
        batch_op.drop_column("worker")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_lease_expires_at")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("worker_pid")
        batch_op.drop_column("worker_host")
