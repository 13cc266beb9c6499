"""Initial schema: jobs, attempts, checkpoints, events, tokens.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.String(length=80), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('submission_id', sa.String(length=200), nullable=True),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('backend', sa.String(length=40), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('current_attempt', sa.Integer(), nullable=False),
    sa.Column('restarts_used', sa.Integer(), nullable=False),
    sa.Column('next_launch_at', sa.Float(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('max_steps', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('submission_id')
    )
    op.create_index(op.f('ix_jobs_name'), 'jobs', ['name'], unique=False)
    op.create_index(op.f('ix_jobs_phase'), 'jobs', ['phase'], unique=False)
    op.create_table('attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=80), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('handle', sa.String(length=200), nullable=False),
    sa.Column('log_path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('end_reason', sa.String(length=40), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('final_status', sa.String(length=20), nullable=True),
    sa.Column('final_reason', sa.String(length=40), nullable=True),
    sa.Column('last_heartbeat_at', sa.Float(), nullable=True),
    sa.Column('heartbeats', sa.Integer(), nullable=False),
    sa.Column('resumed_from_step', sa.Integer(), nullable=True),
    sa.Column('first_step', sa.Integer(), nullable=True),
    sa.Column('first_step_at', sa.Float(), nullable=True),
    sa.Column('last_step', sa.Integer(), nullable=False),
    sa.Column('last_step_at', sa.Float(), nullable=True),
    sa.Column('checkpoint_seconds', sa.Float(), nullable=False),
    sa.Column('checkpoint_step_at_end', sa.Integer(), nullable=True),
    sa.Column('steps_lost', sa.Integer(), nullable=True),
    sa.Column('recovery_s', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'number')
    )
    op.create_index(op.f('ix_attempts_job_id'), 'attempts', ['job_id'], unique=False)
    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=80), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('world_size', sa.Integer(), nullable=False),
    sa.Column('save_seconds', sa.Float(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'step', 'uri')
    )
    op.create_index(op.f('ix_checkpoints_job_id'), 'checkpoints', ['job_id'], unique=False)
    op.create_table('events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=80), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_events_job_id_id', 'events', ['job_id', 'id'], unique=False)
    op.create_table('tokens',
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('job_id', sa.String(length=80), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('hash')
    )
    op.create_index(op.f('ix_tokens_job_id'), 'tokens', ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_tokens_job_id'), table_name='tokens')
    op.drop_table('tokens')
    op.drop_index('ix_events_job_id_id', table_name='events')
    op.drop_table('events')
    op.drop_index(op.f('ix_checkpoints_job_id'), table_name='checkpoints')
    op.drop_table('checkpoints')
    op.drop_index(op.f('ix_attempts_job_id'), table_name='attempts')
    op.drop_table('attempts')
    op.drop_index(op.f('ix_jobs_phase'), table_name='jobs')
    op.drop_index(op.f('ix_jobs_name'), table_name='jobs')
    op.drop_table('jobs')
