"""Monitoring decisions: one row per `make monitor` run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "monitoring_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("retrain", sa.Boolean, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("model_version", sa.String(64)),
        sa.Column("window_start", TS),
        sa.Column("window_end", TS),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("labelled_rows", sa.Integer, nullable=False),
        sa.Column("report", sa.String(1024)),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("acted_at", TS),
        sa.Column("action", sa.JSON(none_as_null=True)),
    )
    op.create_index("ix_monitoring_runs_created_at", "monitoring_runs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_monitoring_runs_created_at", table_name="monitoring_runs")
    op.drop_table("monitoring_runs")
