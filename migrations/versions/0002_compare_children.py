"""Compare jobs as parents of train jobs: jobs.parent_job_id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_job_id", sa.String(length=36), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_parent_job_id_jobs"),
            "jobs",
            ["parent_job_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index(op.f("ix_jobs_parent_job_id"), ["parent_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_parent_job_id"))
        batch.drop_constraint(op.f("fk_jobs_parent_job_id_jobs"), type_="foreignkey")
        batch.drop_column("parent_job_id")
