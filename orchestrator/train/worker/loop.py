"""The training loop of one Ray Train worker (``train_loop_per_worker``).

Order matters for exact resume: pick the checkpoint first (its data cursor opens the stream),
then build the model with the same seed on every rank, build the engine, restore the
DeepSpeed shards and this rank's RNG states. Every optimizer step ends in one small collective,
so all ranks stop at the same step: ``metrics.sync_step`` gathers the metrics with the NaN-loss,
fenced, report and checkpoint-due flags and the preemption notice (its flag and time left); the
next batch is staged before it (``inputs.StagedBatches``).
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import CheckpointError, TransientStorageError
from orchestrator.model import build_model
from orchestrator.spec import parse_manifest
from orchestrator.train.checkpoint import (
    DS_TAG, AsyncUploader, Checkpointer, CheckpointStore, IntervalTracker, Resume, TrainState, mtbp_from_env,
    prepare_resume, rng,
)
from orchestrator.train.heartbeat import HeartbeatClient, Identity
from orchestrator.train.worker import metrics as M, regroup
from orchestrator.train.worker.engine import build_engine, scheduler_state
from orchestrator.train.worker.elastic import elastic_side, in_place_plan, leave_if_noticed
from orchestrator.train.worker.errors import FencedError, GrowRequested, NanLossError, NodePreempted, PreemptedError
from orchestrator.train.worker.heads import (
    MaskedPositionsPretraining, attention_for, compile_encoder, device_inputs, mlm_capacity,
)
from orchestrator.train.worker.inputs import StagedBatches, job_stream, tokenizer_files
from orchestrator.train.worker.preemption import PreemptionWatcher, StopRequest
from orchestrator.train.worker.progress import Progress
from orchestrator.train.worker.reports import heartbeat, step_row
from orchestrator.train.worker.tensorboard import ScalarLog

log = logging.getLogger("bertctl.train.loop")

# ray.train.report is a barrier with a controller round trip (seconds on a loaded 2-core host), so
# per-step rows are buffered and flushed when rank 0 says so (through the per-step metrics
# all-reduce), at most every REPORT_EVERY_S, and at every checkpoint and at the end.
REPORT_EVERY_S = 2.0


def _device(on_gpu: bool):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")


class Worker:
    """State of one rank; ``run`` is the whole loop."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.job = parse_manifest(config["manifest"])
        self.identity = Identity(job_id=config["job_id"], attempt=int(config["attempt"]),
                                 manager_url=config.get("manager_url"), token=Identity.token_from_env())
        self.on_gpu = self.job.spec.resources.gpus_per_worker > 0
        self.device = _device(self.on_gpu)
        t, d = self.job.spec.training, self.job.spec.data  # the head's static row count (worker/heads.py)
        self.mlm_capacity = mlm_capacity(t.micro_batch_size * d.seq_len, d.mlm_probability)
        self.member = regroup.Membership.from_ray_train()
        self.scratch = Path(tempfile.mkdtemp(prefix=f"bertctl-{self.member.rank}-", dir=config.get("scratch_root")))
        ckpt = self.job.spec.checkpoint
        # An elastic attempt's ranks each watch their own node for a notice, and re-form instead of ending.
        self.drain = regroup.NodeDrainWatch() if config.get("elastic") else None
        self.interval = IntervalTracker(ckpt.every_steps, mtbp_from_env(), max_steps=self.job.spec.training.max_steps)
        self.heartbeats: HeartbeatClient | None = None  # rank 0's
        self.ckpts = Checkpointer(CheckpointStore(ckpt.uri, keep_last=ckpt.keep_last), self.member.rank,
                                  self.member.world_size, self.identity.attempt, self.scratch, uploader=self._uploader())
        self._join(self.member)
        self.model_config: dict[str, Any] = {}  # set by _build_model (saved in every checkpoint)
        self.engine = None  # the DeepSpeed engine, set by _build_engine
        self.scalars: ScalarLog | None = None  # rank 0's TensorBoard event file, opened by _train
        self.rows: list[dict] = []
        self.last_flush = time.monotonic()
        self.step_end = time.perf_counter()

    def _join(self, member: regroup.Membership) -> None:
        """What depends on this rank's place in its group; again after the group re-formed in place."""
        self.member, self.rank, self.world_size = member, member.rank, member.world_size
        self.ckpts.rank, self.ckpts.world_size = member.rank, member.world_size
        # The driver relays SIGTERM into this file (worker/preemption.py); every rank polls it per step.
        self.watcher = PreemptionWatcher(self.job.spec.checkpoint.preemption_deadline_s,
                                         self.config.get("notice_file"), probes=[self.drain] if self.drain else None)
        self.elastic = elastic_side(self.config, self.job, self.rank, self.world_size)
        if self.rank == 0 and self.heartbeats is None:
            self.heartbeats = HeartbeatClient(self.identity)

    def _uploader(self) -> AsyncUploader | None:
        """checkpoint.async_upload: shards upload in the background while training goes on."""
        return AsyncUploader(max_workers=4) if self.job.spec.checkpoint.async_upload else None

    # ----- lifecycle
    def run(self) -> None:
        try:
            while self._run_group():
                pass
        finally:
            self._close()

    def _run_group(self) -> bool:
        """Train in this group; True when it re-formed in place and this rank trains on in the new one."""
        resume = self._find_resume()
        resumes = resume.ckpt.step if resume else 0
        leave_if_noticed(self.watcher, self.elastic, resumes)  # a node noticed while this group formed
        stream = job_stream(self.job, self.rank, self.world_size, resume.state.cursor if resume else None)
        try:
            state = self._prepare(stream.index, resume)
            leave_if_noticed(self.watcher, self.elastic, resumes)  # ... or while it loaded
            self._train(stream, state)
        except regroup.ReformedInPlace:
            return True
        except regroup.LeftGroup:
            return False
        finally:
            stream.close()
        return False

    def _close(self) -> None:
        if self.drain:
            self.drain.close()
        if self.heartbeats:
            self.heartbeats.close()
        if self.scalars:
            self.scalars.close()
        if self.ckpts.uploader is not None:
            self.ckpts.uploader.close(timeout=0)  # everything that had to land was waited for already
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ----- setup: checkpoint -> model -> engine -> restore (the order exact resume needs)
    def _starting(self, phase: str) -> None:
        """Rank 0 tells the manager what it does before step 1 (sent only when the phase changes)."""
        if self.heartbeats:
            self.heartbeats.starting(phase)

    def _find_resume(self) -> Resume | None:
        self._starting("finding and fetching the newest checkpoint")
        log.info("timing: load_start=%.3f", time.time())
        resume = self.ckpts.find(max_step=self.job.spec.training.max_steps)
        log.info("timing: found=%.3f", time.time())
        return resume

    def _prepare(self, index, resume: Resume | None) -> TrainState | None:
        """Model, engine and (when resuming) the restored state; every rank, in the same order."""
        self._keep_tokenizer(index)
        self._starting("building the model and engine")
        model = self._build_model(index)
        plan = self._resume_plan(resume) if resume else None
        log.info("timing: model_built=%.3f", time.time())
        self._build_engine(model, load_universal=bool(plan and plan.load_universal))
        if resume:
            self._starting(f"loading checkpoint step {resume.ckpt.step}")
        state = self._restore(resume, plan) if resume else None
        if self.elastic:
            self.elastic.loaded()
        return state

    def _keep_tokenizer(self, index) -> None:
        """A copy of the tokenizer in every checkpoint, so export needs nothing but the checkpoint."""
        tok_dir = tokenizer_files(index, self.scratch) if self.rank == 0 else None
        if tok_dir:
            self.ckpts.extra_dirs["tokenizer"] = tok_dir

    def _build_model(self, index):
        spec = self.job.spec
        rng.seed_everything(spec.data.seed)  # the same initial weights on every rank
        self.model_config = spec.model.bert_config(index.vocab_size)
        pad_id = int((getattr(index, "special_tokens", None) or {}).get("[PAD]", 0))
        model = MaskedPositionsPretraining(build_model(self.model_config, spec.data.nsp, pad_token_id=pad_id,
                                                       attention=attention_for(spec.training)), spec.data.nsp)
        model.to(self.device)
        if spec.training.compile:  # in place, so the engine wraps it compiled (heads.compile_encoder)
            compile_encoder(model, packed=spec.training.unpad)
        rng.seed_rank(spec.data.seed, self.rank)  # then per-rank streams (dropout) that a resume restores
        return model

    def _build_engine(self, model, load_universal: bool) -> None:
        self.engine = build_engine(self.job, model, self.world_size, self.on_gpu, load_universal=load_universal)
        if self.job.spec.checkpoint.async_upload:  # the step waits for an in-memory copy, not for torch.save
            from orchestrator.train.checkpoint import snapshot

            snapshot.install(self.engine)
        log.info("timing: engine_built=%.3f", time.time())

    def _restore(self, resume: Resume, plan) -> TrainState:
        state = self.ckpts.restore(self.engine, resume, plan)
        log.info("timing: loaded=%.3f", time.time())
        return state

    def _resume_plan(self, resume: Resume):
        """Same world size: load as saved; another one: convert to DeepSpeed's universal format first."""
        import torch.distributed as dist

        shared = Path(self.config.get("scratch_root") or self.scratch)  # node-local, shared by its ranks
        work = shared / f"universal-{self.identity.attempt}-{resume.ckpt.step:08d}"
        is_converter = self.member.local_rank == 0 if self.config.get("scratch_root") else True
        return prepare_resume(str(resume.local / resume.ckpt.root), DS_TAG, resume.state.world_size,
                              self.world_size, resume.state.zero_stage, str(work), is_converter=is_converter,
                              barrier=dist.barrier if dist.is_initialized() else None)

    # ----- training
    def _train(self, stream, state: TrainState | None) -> None:
        run = Progress.from_state(state)
        self.interval.last_save_step = run.step
        if self.rank == 0:  # purges what earlier attempts wrote past the resumed step (worker/tensorboard.py)
            if self.scalars:  # this rank's file of the group it had before an in-place re-form
                self.scalars.close()
            self.scalars = ScalarLog(self.job.spec.checkpoint.uri, run.step + 1, self.identity.attempt, self.scratch)
        self.batches = StagedBatches(iter(stream), functools.partial(
            device_inputs, device=self.device, capacity=self.mlm_capacity, unpad=self.job.spec.training.unpad))
        self.step_end = time.perf_counter()
        while run.step < self.job.spec.training.max_steps:
            self._train_step(*self.batches.take(), run)
        self._finish(run)

    def _train_step(self, batch, inputs: list[dict], run: Progress) -> None:
        """One optimizer step and what follows it: stop checks, checkpoint, report."""
        m = self._step(batch, inputs, run.step + 1)
        step_done = time.time()
        run.advance(m, batch.cursor.to_dict())
        self._raise_on_stop_flags(m, run.step)
        self.interval.record_step(m.seconds)
        if self.elastic:
            self.elastic.stepped(m.seconds)
        # Agreed in the step's collective (every rank the same answer), decided after the step is counted.
        request = self.watcher.decide(m.noticed, m.time_left_s, m.attempt_wide, self._save_cost())
        saved = self._checkpoint_if_due(m, run, request)
        stopping = request is not StopRequest.CONTINUE
        growing = not stopping and self._grow_now(run, saved)
        if self.elastic and run.resumed_from is not None:
            self.elastic.formed(run.resumed_from, step_done)  # this group's first step: complete its record
        self._report(m, run, batch, saved, force_flush=stopping or growing)
        run.resumed_from = None
        if stopping:
            self._stop(run, saved, step_done)
        if growing:
            self.elastic.leaving("grow", run.step, step_done)
            raise GrowRequested(f"room for more than {self.world_size} worker(s) at step {run.step}: re-forming")

    def _stop(self, run: Progress, saved, step_done: float) -> None:
        """After a notice: the attempt's own ends it; a node's re-forms an elastic group on the survivors."""
        how = "checkpoint committed" if saved else "too late to checkpoint"
        if self.elastic and not self.watcher.attempt_wide:
            self._reform_in_place(run.step, saved is not None, step_done)  # raises when it can
            self.elastic.leaving("shrink_notice", run.step, step_done)
            raise NodePreempted(f"a node of the group is preempted; after step {run.step}: {how}")
        raise PreemptedError(f"preempted after step {run.step}: {how}")

    def _reform_in_place(self, step: int, committed: bool, step_done: float) -> None:
        """Collective after a node's notice: the survivors re-form without ending (raises
        ``ReformedInPlace`` there, ``LeftGroup`` on the noticed node), or nothing happens and
        the group ends to re-form through Ray Train (worker/regroup.py)."""
        headroom, noticed = self.elastic.headroom() if committed else None, self.drain() is not None
        plan = in_place_plan(self.job, self.member.train_rank, noticed, committed, headroom)
        if plan is None:
            return
        decided, member = time.time(), plan.membership_of(self.member.train_rank)
        if member is None:
            regroup.leave_group()
            log.info("rank %d leaves node %s (%s); %d rank(s) go on in place from step %d", self.rank,
                     regroup.this_node(), "its node is under notice" if noticed else "released: the batch rule",
                     len(plan.survivors), step)
            raise regroup.LeftGroup()
        old_world, self.engine = self.world_size, None
        regroup.rejoin(member, plan.survivors[0], regroup.process_group_backend(self.on_gpu))
        self._join(member)
        self.elastic.reformed_in_place(step, old_world, step_done, decided, plan.departed)
        raise regroup.ReformedInPlace()

    def _grow_now(self, run: Progress, saved) -> bool:
        """An elastic group grows at a committed checkpoint before max_steps when there is room."""
        if not (self.elastic and saved is not None and run.step < self.job.spec.training.max_steps):
            return False
        if not self.elastic.grow_now():  # collective: rank 0 looks at the cluster and the journal
            return False
        return self.ckpts.wait_committed(None) is None

    def _raise_on_stop_flags(self, m: M.StepMetrics, step: int) -> None:
        if m.nonfinite:
            raise NanLossError(f"loss became {m.loss} at step {step}; lower training.lr, raise "
                               "warmup_steps or check the data")
        if m.fenced:
            raise FencedError(f"attempt {self.identity.attempt} was fenced by the manager at step {step}")

    def _checkpoint_if_due(self, m: M.StepMetrics, run: Progress, request: StopRequest):
        """The save of this step (None when none was due, or it missed the preemption deadline)."""
        saved = None
        if m.save or run.step == self.job.spec.training.max_steps or request is StopRequest.CHECKPOINT_AND_STOP:
            saved = self._save(run)
            run.last_saved = run.step
        if request is not StopRequest.CONTINUE:
            # An async save (this one or an earlier one) must land within the deadline, or stay uncommitted.
            failed = self.ckpts.wait_committed(max(0.0, self.watcher.time_left()))
            saved = None if failed else saved
        return saved

    def _finish(self, run: Progress) -> None:
        if run.last_saved != run.step:  # resumed at max_steps with no checkpoint of it yet
            self._save(run)
        failed = self.ckpts.wait_committed(None)
        if failed:  # a temporary cause (a throttled upload, a lost rank) is worth another attempt
            error = CheckpointError if failed.permanent else TransientStorageError
            raise error(f"the checkpoint of step {run.step} (max_steps) did not commit: {failed}")
        self._flush()
        if self.elastic:
            self.elastic.finished()

    def _save_cost(self) -> float | None:
        """For the preemption decision: the full time to a commit (with async upload: to the
        background commit, which a preemption has to wait for), once one was measured."""
        known = [x for x in (self.ckpts.commit_cost_s, self.interval.save_cost_s) if x is not None]
        return max(known) if known else None

    def _save_due(self, step: int) -> bool:
        """Rank 0's view (the all-reduce makes it everyone's): a fixed interval, or Young-Daly for 'auto'."""
        every = self.job.spec.checkpoint.every_steps
        return step % every == 0 if isinstance(every, int) else self.interval.due(step)

    def _step(self, batch, inputs: list[dict], step: int) -> M.StepMetrics:
        acc = M.StepAccumulator(started=self.step_end)
        lr = float(self.engine.get_lr()[0])
        for micro_inputs in inputs:
            out = self.engine(**micro_inputs)
            self.engine.backward(out["loss"])
            self.engine.step()
            acc.add_outputs(out)
        if step < self.job.spec.training.max_steps:  # the next batch's host work overlaps this step's device work
            self.batches.stage_next()
        acc.add_samples(batch.sample_ids)
        if (self.heartbeats and self.heartbeats.fenced.is_set()) or self.ckpts.stale:
            acc.raise_flag(M.FLAG_FENCED)
        if self.rank == 0 and time.monotonic() - self.last_flush >= REPORT_EVERY_S:
            acc.raise_flag(M.FLAG_REPORT)
        if self.rank == 0 and self._save_due(step):
            acc.raise_flag(M.FLAG_SAVE)
        acc.set_notice(*self.watcher.local_view())
        acc.set_grad_norm(M.global_grad_norm(self.engine))
        metrics = M.sync_step(acc, step, lr)
        self.step_end = time.perf_counter()
        return metrics

    def _save(self, run: Progress):
        for failure in self.ckpts.background_failures():
            log.warning("an earlier background checkpoint stayed uncommitted: %s", failure)
        result = self.ckpts.save(self.engine, self._train_state(run))
        if self.elastic and self.interval.auto:
            # Losses inside an elastic attempt end no attempt, so the manager's figure misses them.
            self.interval.mtbp_s = self.elastic.work_loss_mtbp_s() or self.interval.mtbp_s
        self.interval.record_save(run.step, result.seconds)
        return result

    def _train_state(self, run: Progress) -> TrainState:
        return run.train_state(self.job.spec, self.identity, self.world_size, scheduler_state(self.engine.lr_scheduler),
                               self.model_config)

    # ----- reporting
    def _report(self, m: M.StepMetrics, run: Progress, batch, saved, force_flush: bool = False) -> None:
        step = run.step
        if self.heartbeats:
            self.heartbeats.send(heartbeat(m, run, self.identity, self.job, self.ckpts, self.world_size, self.elastic))
        t = self.job.spec.training
        if step % t.log_every_steps == 0 or step == t.max_steps:
            self.rows.append(step_row(m, run, batch, saved, t.max_steps))
            if self.scalars:
                self.scalars.step(step, m)
        if self.scalars and saved is not None:
            self.scalars.checkpointed(saved.step, saved.seconds)
        if m.report or saved is not None or step == t.max_steps or force_flush:
            self._flush()

    def _flush(self) -> None:
        """A collective: every rank calls it at the same steps (decided through the all-reduce)."""
        if self.member.in_place:  # Ray Train's report would wait for the ranks that left
            regroup.relay_rows(self.config["metrics_relay"], self.rows, self.rank, self.world_size)
        else:
            import ray.train

            ray.train.report({"rows": self.rows, "rank": self.rank})
        self.rows = []
        self.last_flush = time.monotonic()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point Ray Train runs on every worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("timing: worker_start=%.3f", time.time())
    Worker(config).run()
