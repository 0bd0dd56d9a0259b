"""Migration 0009 moves what older rows kept elsewhere into the job's own columns: the export
folder from the `finished` event, the trace snapshot out of the stored spec; and back."""

import json
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import service.core.store as store


def test_0009_moves_the_export_and_the_snapshot_into_the_jobs_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store.__file__).parents[1] / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0008")
    spec = {"name": "t", "environment": {"name": "traces", "config": {"select": {"model": "m"},
                                                                      "snapshot": "/runs/traces/abc.parquet"}}}
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO teams (id, name, max_concurrent_jobs, created_at) "
                             "VALUES ('team_1', 'a', 1, '2026-12-01 00:00:00')"))
        for job_id, job_spec in (("job_1", spec), ("job_2", {"name": "u", "environment": {"name": "dataset"}})):
            conn.execute(sa.text("INSERT INTO jobs (id, team_id, name, state, priority, spec, steps, step, restarts, "
                                 "created_at) VALUES (:id, 'team_1', 'n', 'succeeded', 0, :spec, 1, 1, 0, "
                                 "'2026-12-01 00:00:00')"), {"id": job_id, "spec": json.dumps(job_spec)})
        conn.execute(sa.text("INSERT INTO job_events (job_id, seq, kind, message, data, created_at) VALUES "
                             "('job_1', 5, 'finished', '', :data, '2026-12-01 00:00:00')"),
                     {"data": '{"export_dir": "/runs/job_1/model", "wandb": null}'})
    engine.dispose()
    store.migrate(url)
    with store.session_factory(store.make_engine(url))() as s:
        moved, other = s.get(store.Job, "job_1"), s.get(store.Job, "job_2")
        assert moved.export_dir == "/runs/job_1/model" and other.export_dir is None
        assert moved.traces_snapshot == "/runs/traces/abc.parquet" and other.traces_snapshot is None
        assert moved.spec["environment"]["config"] == {"select": {"model": "m"}}
        assert other.spec == {"name": "u", "environment": {"name": "dataset"}}
    command.downgrade(cfg, "0008")  # and back: the snapshot returns into the spec
    with sa.create_engine(url).connect() as conn:
        spec_back = json.loads(conn.execute(sa.text("SELECT spec FROM jobs WHERE id = 'job_1'")).scalar())
    assert spec_back["environment"]["config"] == {"select": {"model": "m"}, "snapshot": "/runs/traces/abc.parquet"}
