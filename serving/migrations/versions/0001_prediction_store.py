"""Prediction store: predictions, outcomes, interventions, online_features.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Tables are spelled out here, not imported from serving.store: a migration is a frozen record
of one schema step, and later edits to the live tables must arrive as new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("prediction_id", sa.String(32), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("request_id", sa.String(64)),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64)),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("risk_score", sa.Integer, nullable=False),
        sa.Column("risk_band", sa.String(32), nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("reasons", sa.JSON(none_as_null=True)),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_index("ix_predictions_customer_created", "predictions", ["customer_id", "created_at"])
    op.create_table(
        "outcomes",
        sa.Column("prediction_id", sa.String(32), primary_key=True),
        sa.Column("customer_id", sa.String(64)),
        sa.Column("defaulted", sa.Integer, nullable=False),
        sa.Column("observed_at", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.CheckConstraint("defaulted IN (0, 1)", name="ck_outcomes_defaulted_binary"),
    )
    op.create_table(
        "interventions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("prediction_id", sa.String(32)),
        sa.Column("risk_score", sa.Integer),
        sa.Column("risk_band", sa.String(32)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index(
        "ix_interventions_customer_created", "interventions", ["customer_id", "created_at"]
    )
    op.create_table(
        "online_features",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("as_of", TS, nullable=False),
        sa.Column("data_version", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("online_features")
    op.drop_index("ix_interventions_customer_created", table_name="interventions")
    op.drop_table("interventions")
    op.drop_table("outcomes")
    op.drop_index("ix_predictions_customer_created", table_name="predictions")
    op.drop_index("ix_predictions_created_at", table_name="predictions")
    op.drop_table("predictions")
