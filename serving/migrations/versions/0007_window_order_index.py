"""The predictions' created_at index becomes (created_at, prediction_id): the monitoring
window's order (newest first, ties by id) and its bound are read off the index alone. With
created_at only, a score-batch run (millions of rows under one created_at) left the store to
sort the whole tie, full rows and all: the monitoring job over a 10M-row window ran for more
than 15 minutes in SQLite without finishing, where the new index answers in seconds.
Building it over 10M rows took 37 s in SQLite.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_predictions_created_id", "predictions", ["created_at", "prediction_id"])
    op.drop_index("ix_predictions_created_at", table_name="predictions")


def downgrade() -> None:
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.drop_index("ix_predictions_created_id", table_name="predictions")
