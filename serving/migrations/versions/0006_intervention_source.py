"""Interventions say where they come from: `source` is `policy` for those a prediction
triggers (the log writer records them; every row before this revision is one, filled in by
the column's default) or `manual` for a person's decision recorded with POST
/interventions, which may carry a `note`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-16
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHECK = "ck_interventions_source"


def upgrade() -> None:
    # batch: SQLite adds a CHECK constraint only by rebuilding the table (rows and indexes
    # are copied); PostgreSQL alters it in place
    with op.batch_alter_table("interventions") as batch:
        batch.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="policy")
        )
        batch.add_column(sa.Column("note", sa.String(500)))
        batch.create_check_constraint(CHECK, "source IN ('policy', 'manual')")


def downgrade() -> None:
    with op.batch_alter_table("interventions") as batch:
        batch.drop_constraint(CHECK, type_="check")
        batch.drop_column("note")
        batch.drop_column("source")
