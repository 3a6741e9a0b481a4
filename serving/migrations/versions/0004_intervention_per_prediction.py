"""Interventions are written by the prediction-log writer, off the request path, and replayed
from its spool after an outage: one per prediction (a unique index on prediction_id), so a
replayed batch never records one twice.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NAME = "ux_interventions_prediction"


def upgrade() -> None:
    op.create_index(NAME, "interventions", ["prediction_id"], unique=True)


def downgrade() -> None:
    op.drop_index(NAME, table_name="interventions")
