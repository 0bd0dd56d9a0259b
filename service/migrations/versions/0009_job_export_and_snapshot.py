"""A job's export folder and its trace snapshot are columns of the job: the export folder the
trainer declares in its `finished` report (it was read back from the event), and the snapshot a
job's trace selection was frozen into (it was written into the stored spec, then stripped again
to compare requests). Existing rows are moved over.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("export_dir", sa.String(500), nullable=True))
        batch.add_column(sa.Column("traces_snapshot", sa.String(1000), nullable=True))
    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON),
                    sa.column("export_dir", sa.String), sa.column("traces_snapshot", sa.String))
    events = sa.table("job_events", sa.column("job_id", sa.String), sa.column("kind", sa.String),
                      sa.column("data", sa.JSON), sa.column("seq", sa.Integer))
    for job_id, data in bind.execute(sa.select(events.c.job_id, events.c.data).where(events.c.kind == "finished")
                                     .order_by(events.c.seq)).all():
        if isinstance(data, dict) and data.get("export_dir"):
            bind.execute(jobs.update().where(jobs.c.id == job_id).values(export_dir=data["export_dir"]))
    for job_id, spec in bind.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        config = (spec or {}).get("environment", {}).get("config")
        if isinstance(config, dict) and "select" in config and config.get("snapshot"):
            environment = {**spec["environment"], "config": {k: v for k, v in config.items() if k != "snapshot"}}
            bind.execute(jobs.update().where(jobs.c.id == job_id)
                         .values(spec={**spec, "environment": environment}, traces_snapshot=config["snapshot"]))


def downgrade() -> None:
    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON),
                    sa.column("traces_snapshot", sa.String))
    for job_id, spec, path in bind.execute(sa.select(jobs.c.id, jobs.c.spec, jobs.c.traces_snapshot)
                                           .where(jobs.c.traces_snapshot.is_not(None))).all():
        environment = spec["environment"]  # the snapshot goes back into the spec, where 0008 read it
        config = {**environment["config"], "snapshot": path}
        bind.execute(jobs.update().where(jobs.c.id == job_id)
                     .values(spec={**spec, "environment": {**environment, "config": config}}))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("traces_snapshot")
        batch.drop_column("export_dir")
