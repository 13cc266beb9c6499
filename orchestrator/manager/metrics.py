"""/metrics in the Prometheus text format, computed from the store at scrape time.

A scrape costs the same handful of queries however many jobs there are (``ScrapeData.load``):
the jobs, all their attempts and their newest checkpoints are read in one query each, and the
per-job gauges (label ``job``) are computed in memory. It covers the ``MAX_JOBS`` newest jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from orchestrator.manager.goodput import job_goodput
from orchestrator.manager.models import Attempt, Checkpoint
from orchestrator.manager.phases import ACTIVE, Phase
from orchestrator.manager.store import Store, row

MAX_JOBS = 500

# name suffix (bertctl_job_...) -> help text; every one has the label ``job``.
JOB_GAUGES = {
    "step": "Newest reported step.",
    "max_steps": "The job's max_steps.",
    "tokens_per_second": "Newest reported tokens/s.",
    "goodput_productive_fraction": "Productive share of wall time (kept steps x step time / wall time).",
    "restarts": "Restarts used (attempts that ended without success and were retried).",
    "current_attempt": "Number of the job's current (newest) attempt.",
    "steps_lost": "Steps redone after failures.",
    "recovery_seconds": "Failure to first resumed step, summed over attempts.",
    "checkpoint_seconds": "Time training spent checkpointing.",
    "heartbeat_age_seconds": "Active jobs: seconds since the current attempt's last heartbeat (or its launch).",
    "seconds_since_checkpoint": "Active jobs: seconds since the newest committed checkpoint (or, before the "
                                "first one, since the first attempt's launch).",
}


@dataclass
class ScrapeData:
    """Everything one scrape needs, read in a fixed number of queries."""

    jobs: list[dict[str, Any]]
    attempts: dict[str, list[dict[str, Any]]]
    newest_checkpoint_at: dict[str, float]

    @classmethod
    def load(cls, store: Store) -> "ScrapeData":
        jobs = store.list_jobs(limit=MAX_JOBS)
        ids = [j["id"] for j in jobs]
        attempts: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if not ids:
            return cls(jobs, attempts, {})
        with store.tx(durable=False) as s:
            for a in s.scalars(select(Attempt).where(Attempt.job_id.in_(ids)).order_by(Attempt.job_id, Attempt.number)):
                attempts[a.job_id].append(row(a))
            newest = dict(s.execute(select(Checkpoint.job_id, func.max(Checkpoint.created_at))
                                    .where(Checkpoint.job_id.in_(ids)).group_by(Checkpoint.job_id)).all())
        return cls(jobs, attempts, newest)


class _StoreCollector:
    def __init__(self, store: Store, now: float):
        self.store, self.now = store, now

    def collect(self):
        yield self._phases()
        total = CounterMetricFamily("bertctl_attempts", "Attempts launched, all jobs.")
        total.add_metric([], self.store.attempt_count())
        yield total
        restarts = CounterMetricFamily("bertctl_restarts", "Attempts that ended without success, by reason.",
                                       labels=["reason"])
        for reason, n in sorted(self.store.restart_counts().items()):
            restarts.add_metric([reason], n)
        yield restarts
        yield from self._per_job(ScrapeData.load(self.store))

    def _phases(self) -> GaugeMetricFamily:
        g = GaugeMetricFamily("bertctl_jobs", "Jobs by phase.", labels=["phase"])
        counts = self.store.phase_counts()
        for phase in Phase:
            g.add_metric([phase.value], counts.get(phase.value, 0))
        return g

    def _per_job(self, data: ScrapeData):
        fams = {k: GaugeMetricFamily(f"bertctl_job_{k}", text, labels=["job"]) for k, text in JOB_GAUGES.items()}
        phase = GaugeMetricFamily("bertctl_job_phase", "1 for the job's current phase, 0 for the others.",
                                  labels=["job", "phase"])
        for job in data.jobs:
            for p in Phase:
                phase.add_metric([job["id"], p.value], 1.0 if job["phase"] == p.value else 0.0)
            self._job(fams, job, data.attempts[job["id"]], data.newest_checkpoint_at.get(job["id"]))
        yield from fams.values()
        yield phase

    def _job(self, fams, job: dict[str, Any], attempts: list[dict[str, Any]], checkpoint_at: float | None) -> None:
        jid = [job["id"]]
        g = job_goodput(job, attempts, self.now)
        values = {"step": job["step"], "max_steps": job["max_steps"],
                  "tokens_per_second": (job["metrics"] or {}).get("tokens_per_s") or 0.0,
                  "goodput_productive_fraction": g["productive_fraction"] or 0.0, "restarts": job["restarts_used"],
                  "current_attempt": job["current_attempt"], "steps_lost": g["steps_lost"],
                  "recovery_seconds": g["recovery_s"], "checkpoint_seconds": g["checkpoint_s"]}
        if job["phase"] in {p.value for p in ACTIVE} and attempts:
            cur = attempts[-1]
            values["heartbeat_age_seconds"] = max(0.0, self.now - (cur["last_heartbeat_at"] or cur["created_at"]))
            since = checkpoint_at if checkpoint_at is not None else attempts[0]["created_at"]
            values["seconds_since_checkpoint"] = max(0.0, self.now - since)
        for key, value in values.items():
            fams[key].add_metric(jid, value)


def render(store: Store, now: float) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector(store, now))
    return generate_latest(registry)
