"""outputs: one unique constraint over (job_id, kind, sop_instance_uid).

The evaluation SRs made several outputs of one kind per job possible, and the model's constraint moved
from (job_id, kind) to (job_id, kind, sop_instance_uid) without a migration: databases created before
that change still carry the old, narrower constraint (which refuses a job's second evaluation SR). This
revision replaces whatever unique constraint ``outputs`` has with the model's; on a database that
already has it (every database made by the baseline) it does nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 06:35:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WANTED = ["job_id", "kind", "sop_instance_uid"]
NAME = "uq_outputs_job_kind_sop"


def _outputs_table(unique: list[str]) -> sa.Table:
    """The outputs table as the baseline defines it, with the given unique constraint."""
    return sa.Table(
        "outputs",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("seg", "sr", "sc", "eval_sr", name="outputkind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(*unique, name=NAME),
        sa.Index("ix_outputs_job_id", "job_id"),
        sa.Index("ix_outputs_sop_instance_uid", "sop_instance_uid"),
    )


def _unique_constraints() -> list[Any]:
    return sa.inspect(op.get_bind()).get_unique_constraints("outputs")


def upgrade() -> None:
    uniques = _unique_constraints()
    if [u["column_names"] for u in uniques] == [WANTED]:
        return
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # SQLite cannot drop a constraint: copy the table (deliveries reference it; upgrade() runs with
        # foreign keys off and checks them before committing)
        with op.batch_alter_table("outputs", recreate="always", copy_from=_outputs_table(WANTED)):
            pass
    else:
        for u in uniques:
            op.drop_constraint(u["name"], "outputs", type_="unique")
        op.create_unique_constraint(NAME, "outputs", WANTED)


def downgrade() -> None:
    pass  # the wider constraint is what the baseline's model wanted; nothing to undo
