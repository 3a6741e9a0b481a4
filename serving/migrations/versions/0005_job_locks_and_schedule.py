"""One run of a job at a time, and its schedule: `job_locks` holds a lease per job name (the
monitor, its retrain and the scheduler take it), `scheduled_runs` one row per due time of
`riskloop schedule` (ran ok or failed, missed, or skipped because the lock was held).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
STATUSES = ("running", "ok", "failed", "missed", "locked")


def upgrade() -> None:
    op.create_table(
        "job_locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_table(
        "scheduled_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("detail", sa.String(1024)),
        sa.CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in STATUSES)),
            name="ck_scheduled_runs_status",
        ),
    )
    op.create_index("ux_scheduled_runs_job_due", "scheduled_runs", ["job", "due_at"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_scheduled_runs_job_due", table_name="scheduled_runs")
    op.drop_table("scheduled_runs")
    op.drop_table("job_locks")
