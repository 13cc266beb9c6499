"""/metrics in the Prometheus text format, computed from the store at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from orchestrator.manager.goodput import job_goodput
from orchestrator.manager.phases import ACTIVE, Phase
from orchestrator.manager.store import Store


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
        yield from self._per_job()

    def _phases(self) -> GaugeMetricFamily:
        g = GaugeMetricFamily("bertctl_jobs", "Jobs by phase.", labels=["phase"])
        counts = self.store.phase_counts()
        for phase in Phase:
            g.add_metric([phase.value], counts.get(phase.value, 0))
        return g

    def _per_job(self):
        fams = {
            "age": GaugeMetricFamily("bertctl_job_heartbeat_age_seconds", "Seconds since the current attempt's "
                                     "last heartbeat (or its launch).", labels=["job"]),
            "step": GaugeMetricFamily("bertctl_job_step", "Newest reported step.", labels=["job"]),
            "tps": GaugeMetricFamily("bertctl_job_tokens_per_second", "Newest reported tokens/s.", labels=["job"]),
            "frac": GaugeMetricFamily("bertctl_job_goodput_productive_fraction", "Productive share of wall time.",
                                      labels=["job"]),
            "lost": GaugeMetricFamily("bertctl_job_steps_lost", "Steps redone after failures.", labels=["job"]),
            "rec": GaugeMetricFamily("bertctl_job_recovery_seconds", "Failure to first resumed step, summed.",
                                     labels=["job"]),
            "ckpt": GaugeMetricFamily("bertctl_job_checkpoint_seconds", "Time spent checkpointing.", labels=["job"]),
        }
        active = {p.value for p in ACTIVE}
        for job in self.store.list_jobs(limit=500):
            attempts = self.store.attempts(job["id"])
            self._job(fams, job, attempts, job["phase"] in active)
        yield from fams.values()

    def _job(self, fams, job, attempts, active: bool) -> None:
        jid = [job["id"]]
        if active and attempts:
            cur = attempts[-1]
            fams["age"].add_metric(jid, max(0.0, self.now - (cur["last_heartbeat_at"] or cur["created_at"])))
        fams["step"].add_metric(jid, job["step"])
        fams["tps"].add_metric(jid, job["metrics"].get("tokens_per_s") or 0.0)
        g = job_goodput(job, attempts, self.now)
        fams["frac"].add_metric(jid, g["productive_fraction"] or 0.0)
        fams["lost"].add_metric(jid, g["steps_lost"])
        fams["rec"].add_metric(jid, g["recovery_s"])
        fams["ckpt"].add_metric(jid, g["checkpoint_s"])


def render(store: Store, now: float) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector(store, now))
    return generate_latest(registry)
