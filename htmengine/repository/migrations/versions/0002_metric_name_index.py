"""Index metric (datasource, name): finding or creating a metric by name no longer scans the table.

Every sample batch resolves its metric names, and every new name is looked up again under the
``metrics`` lock row; without an index both cost a scan of ``metric``, so creation slowed as the
table grew (73 new names/s at 20,000 metrics). The index is not unique, as in the original:
duplicates are prevented by the lock row, and a database that already holds duplicate names
(possible in the original) still upgrades.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("datasource_name_idx", "metric", ["datasource", "name"])


def downgrade() -> None:
    op.drop_index("datasource_name_idx", table_name="metric")
