"""metric_points: each job's per-step training metrics (downsampled), for the dashboard and audit.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_points",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(length=80), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("mlm_accuracy", sa.Float(), nullable=True),
        sa.Column("nsp_accuracy", sa.Float(), nullable=True),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("world_size", sa.Integer(), nullable=True),
        sa.Column("sample_digest", sa.String(length=64), nullable=True),
        sa.UniqueConstraint("job_id", "attempt", "step"),
    )
    op.create_index("ix_metric_points_job_id_step", "metric_points", ["job_id", "step"])


def downgrade() -> None:
    op.drop_index("ix_metric_points_job_id_step", table_name="metric_points")
    op.drop_table("metric_points")
