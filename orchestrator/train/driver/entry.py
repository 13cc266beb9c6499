"""`python -m orchestrator.train --manifest PATH`: one training attempt, ending in a contract exit code.

The manager's local backend runs exactly this command as its own process group, pointed at its
warm Ray head (``BERTCTL_RAY_ADDRESS``). Run without one, this process starts its own local Ray
cluster (``ray.init(address="local")``), so the Ray head processes are its children in that
group; Ray workers sit in their own process groups but exit by themselves within seconds once
their raylet is gone, so killing the group leaves nothing behind (tests/train/test_entry_process.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.contract import ENV_NOTICE_FILE, CheckpointRef, EndReason, ExitCode, Heartbeat
from orchestrator.errors import BertctlError, ManifestError
from orchestrator.spec import PretrainJob, load_manifest
from orchestrator.train.driver.outcome import ending_of, fenced, retry_after_s
from orchestrator.train.heartbeat import HeartbeatClient, Identity
from orchestrator.train.worker import PreemptionWatcher

log = logging.getLogger("bertctl.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m orchestrator.train",
                                description="Run one training attempt of a PretrainJob manifest.")
    p.add_argument("--manifest", required=True, help="PretrainJob manifest (YAML or JSON)")
    p.add_argument("--work-dir", default=None,
                   help="local directory for Ray results and scratch (default: a new temporary directory)")
    p.add_argument("--metrics-file", default=None,
                   help="append one JSON line per reported step here (default: <work-dir>/metrics.jsonl)")
    p.add_argument("--no-prepare", action="store_true", help="fail instead of preparing missing shards")
    return p.parse_args(argv)


def _prepare(job: PretrainJob) -> None:
    from orchestrator.data.prepare import coverage_for_job, prepare_for_job

    warning = coverage_for_job(job, prepare_for_job(job))
    if warning:  # the attempt's log: a run that cannot read its whole corpus is worth a line before it starts
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _newest_checkpoint(job: PretrainJob) -> CheckpointRef | None:
    from orchestrator.train.checkpoint import CheckpointStore

    try:
        found = CheckpointStore(job.spec.checkpoint.uri).committed()
    except BertctlError:
        return None
    return CheckpointRef(step=found[0].step, uri=found[0].uri, world_size=found[0].world_size) if found else None


def _last_metrics(path: Path) -> dict:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return {}
    rows = [json.loads(ln) for ln in lines]
    steps = [r for r in rows if "loss" in r]
    return steps[-1] if steps else {}


def _final_beat(identity: Identity, job: PretrainJob | None, code: ExitCode, reason: EndReason,
                message: str | None, metrics: dict, retry_after: float | None = None) -> Heartbeat:
    status = {ExitCode.SUCCEEDED: "succeeded", ExitCode.PREEMPTED: "preempted"}.get(code, "failed")
    newest = _newest_checkpoint(job) if job else None
    # An attempt that trained no step (it found the job complete, or failed before step 1) reports
    # the newest checkpoint's step, so the job's step does not fall back to 0.
    step = int(metrics.get("step", newest.step if newest else 0))
    return Heartbeat(
        attempt=identity.attempt, status=status, reason=reason, message=(message or None) and message[:4000],
        step=step, max_steps=job.spec.training.max_steps if job else None,
        loss=metrics.get("loss"), mlm_accuracy=metrics.get("mlm_accuracy"),
        nsp_accuracy=metrics.get("nsp_accuracy"), tokens_per_s=metrics.get("tokens_per_s"),
        lr=metrics.get("lr"), tokens_seen=metrics.get("tokens_seen"),
        checkpoint=newest, retry_after_s=retry_after)


def _already_done(store, job: PretrainJob, work_dir: Path) -> bool:
    """A verified checkpoint at max_steps means the job is complete: no cluster is started."""
    newest = next((c for c in store.committed() if c.step <= job.spec.training.max_steps), None)
    if newest is None or newest.step != job.spec.training.max_steps:
        return False
    found = store.newest_verified(work_dir / "scratch", max_step=job.spec.training.max_steps)
    if found is None or found[0] != newest:
        return False
    log.info("checkpoint step %d is at max_steps: nothing to train", newest.step)
    return True


def run_attempt(job: PretrainJob, identity: Identity, work_dir: Path, metrics_file: Path,
                prepare: bool = True) -> None:
    """Prepare if needed, register the attempt (fencing), and train on Ray; raises on failure.
    Until the workers take over, the driver reports its startup phases ('starting' heartbeats)."""
    reporter = HeartbeatClient(identity)
    try:
        _run_attempt(job, identity, work_dir, metrics_file, prepare, reporter)
    finally:
        reporter.close()


def _run_attempt(job: PretrainJob, identity: Identity, work_dir: Path, metrics_file: Path, prepare: bool,
                 reporter: HeartbeatClient) -> None:
    from orchestrator.train.checkpoint import CheckpointStore

    if prepare:
        reporter.starting("preparing data")
        _prepare(job)
    reporter.starting("checking checkpoints")
    store = CheckpointStore(job.spec.checkpoint.uri, keep_last=job.spec.checkpoint.keep_last)
    store.check_not_stale(identity.attempt)
    store.register_attempt(identity.attempt)
    if _already_done(store, job, work_dir):
        return
    scratch = work_dir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    notice_file = os.environ.get(ENV_NOTICE_FILE) or str(work_dir / "preemption-notice")
    loop_config = {"manifest": job.to_dict(), "job_id": identity.job_id, "attempt": identity.attempt,
                   "manager_url": identity.manager_url, "scratch_root": str(scratch), "notice_file": notice_file}
    try:
        _fit_on_ray(job, identity, work_dir, metrics_file, loop_config, reporter)
    except Exception as exc:
        if not finished_before(exc, store, job, work_dir):
            raise


def finished_before(exc: Exception, store, job: PretrainJob, work_dir: Path) -> bool:
    """The attempt failed after committing its checkpoint at max_steps (a node lost as ``fit()``
    returned): the job is complete. Failing would cost a relaunch that only finds so, or, with the
    restart budget spent, fail a finished job. A fenced attempt never claims it (a newer one owns the
    job); a store that cannot be read leaves the failure as it was."""
    if fenced(exc):
        return False
    try:
        done = _already_done(store, job, work_dir)
    except Exception as cannot_tell:  # noqa: BLE001 - never hide the attempt's own failure behind this one
        log.warning("cannot tell whether the final checkpoint committed: %s", cannot_tell)
        return False
    if done:
        log.warning("the attempt failed (%s: %s) after committing its final checkpoint: the job is complete",
                    type(exc).__name__, exc)
    return done


def _fit_on_ray(job: PretrainJob, identity: Identity, work_dir: Path, metrics_file: Path,
                loop_config: dict, reporter: HeartbeatClient) -> None:
    """Start or join Ray, run the trainer to its end, and leave Ray as it was found."""
    import ray

    from orchestrator.train.driver.launch import build_trainer, elastic, ray_phase, start_ray, waiting_for_workers

    reporter.starting(ray_phase())
    log.info("timing: ray_start=%.3f", time.time())
    owned = start_ray(job, work_dir)
    log.info("timing: ray_up=%.3f", time.time())
    # After ray.init (which would replace it): SIGTERM only sets a flag and the relay writes the
    # notice file the workers poll, so fit() returns after a committed checkpoint (exit 75).
    watcher = PreemptionWatcher(job.spec.checkpoint.preemption_deadline_s,
                                loop_config["notice_file"]).install(relay=True)
    try:
        trainer = build_trainer(job, loop_config, work_dir / "ray", metrics_file,
                                name=f"{identity.job_id}-attempt-{identity.attempt}")
        reporter.starting(waiting_for_workers(job))
        _fit_naming_losses(trainer, job, elastic(job))
    finally:
        watcher.uninstall()
        log.info("timing: fit_end=%.3f", time.time())
        if owned:
            ray.shutdown()
        log.info("timing: ray_down=%.3f", time.time())


def _fit_naming_losses(trainer, job: PretrainJob, is_elastic: bool) -> None:
    """Train; an ending caused by lost capacity is ``NodeLost``, never an untyped crash."""
    import ray

    from orchestrator.train.driver.node_loss import fit_elastic, fit_naming_node_loss

    if is_elastic:  # its failure policy tells lost capacity from a crash (driver/elastic.py)
        journal = trainer.resize_journal
        fit_elastic(trainer.fit, lambda: ray.get(journal.ended_on_capacity.remote(), timeout=10))
    else:
        fit_naming_node_loss(trainer.fit, job.spec.recovery.heartbeat_timeout_s)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("timing: process_main=%.3f", time.time())
    args = parse_args(argv)
    job: PretrainJob | None = None
    identity = Identity(job_id="unknown")
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bertctl-attempt-")).resolve()
    metrics_file = Path(args.metrics_file) if args.metrics_file else work_dir / "metrics.jsonl"
    started = time.time()
    try:
        job = load_manifest(args.manifest).with_absolute_paths()
        identity = Identity.from_env(default_job_id=job.metadata.name)
        log.info("attempt %d of job %s starting (work dir %s)", identity.attempt, identity.job_id, work_dir)
        run_attempt(job, identity, work_dir, metrics_file, prepare=not args.no_prepare)
        code, reason, message, retry_after = ExitCode.SUCCEEDED, EndReason.SUCCEEDED, None, None
    except BaseException as exc:  # noqa: BLE001 - every ending maps to one exit code
        if isinstance(exc, KeyboardInterrupt):
            raise
        code, reason, decisive = ending_of(exc)
        message, retry_after = f"{type(decisive).__name__}: {decisive}", retry_after_s(decisive)
        if isinstance(decisive, ManifestError):
            print(str(decisive), file=sys.stderr)
        log.error("attempt failed (%s, exit %d): %s", reason.value, int(code), message)
    beat = _final_beat(identity, job, code, reason, message, _last_metrics(metrics_file), retry_after)
    HeartbeatClient(identity).send_final(beat)
    log.info("attempt ended: %s (exit %d) after %.1fs", reason.value, int(code), time.time() - started)
    if args.work_dir is None:  # our own temporary directory (Ray results, scratch, metrics)
        shutil.rmtree(work_dir, ignore_errors=True)
    return int(code)
