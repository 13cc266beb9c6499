"""How fast could a shrink be if the surviving worker processes stayed? The in-place re-form
beside a restart of new processes, on the same checkpoint, in the same run.

    .venv/bin/python bench/reform_in_place.py [--workers 4] [--repeats 3]

Today an elastic attempt re-forms by ending its whole worker group and starting a new one (Ray
Train replaces every worker), so each shrink pays new processes, imports, model and engine
(docs/spot.md, "Measured"). This bench measures the two re-forms side by side on bert-tiny (the
spot bench's model: 2 layers, hidden 64, seq 64, micro batch 2, global batch 24) with ZeRO-2 on
gloo, on Ray Core actors of this machine:

- the group of ``--workers`` ranks trains a few steps and saves a ZeRO checkpoint (a notice's
  save; not part of either pause);
- in place: the last rank leaves; the others keep their processes, destroy the process group,
  form a new one of one rank fewer, convert the checkpoint to the universal format (rank 0),
  rebuild the DeepSpeed engine on the model they hold, load the checkpoint and take a step;
- restart: every actor ends; one rank fewer of new actors start, import, build the model and
  the engine, load the same checkpoint and take a step (what a Ray Train re-form does).

Each pause is from the saved checkpoint to the first step done on the smaller group. The last
line: ``ratios: in_place_s=<median> restart_s=<median> restart_over_in_place=<x>``.
The trainer re-forms in place on a noticed loss (worker/regroup.py; measured through a real
manager by bench/spot.py and tests/spot/test_elastic_attempt.py); a grow and a loss without notice
still start new processes. This bench keeps the two paths side by side on one checkpoint, outside
Ray Train: the limit, and what every re-form paid before.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.train.worker.regroup import free_port  # noqa: E402 - after the path insert

MANIFEST = {
    "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "reform"},
    "spec": {
        "model": {"preset": "bert-tiny", "overrides": {"num_hidden_layers": 2, "hidden_size": 64,
                                                       "num_attention_heads": 2, "intermediate_size": 128,
                                                       "max_position_embeddings": 64}},
        "tokenizer": {"vocab_size": 1000},
        "data": {"shards": "/nonexistent", "seq_len": 64, "seed": 7, "nsp": False},
        "training": {"max_steps": 1000, "global_batch_size": 24, "micro_batch_size": 2, "lr": 1e-3,
                     "warmup_steps": 2, "schedule": "constant"},
        "deepspeed": {"zero_stage": 2},
        "resources": {"workers": 4, "cpus_per_worker": 1},
        "checkpoint": {"uri": "/nonexistent"},
    },
}
TAG = "ds"


class Rank:
    """One worker process: its process group, model and DeepSpeed engine."""

    def __init__(self):
        import torch

        torch.set_num_threads(1)
        self.engine = self.model = None

    def form(self, rank: int, world: int, port: int, ckpt: str | None = None, work: str | None = None,
             saved_world: int | None = None) -> float:
        """(Re)join a process group of ``world`` and build the engine, loading ``ckpt`` (saved on
        ``saved_world`` ranks: through the universal format) when given. Returns the time it ended."""
        import torch.distributed as dist

        from orchestrator.model import build_model
        from orchestrator.spec import parse_manifest
        from orchestrator.train.checkpoint.universal import prepare_resume
        from orchestrator.train.worker.engine import build_engine
        from orchestrator.train.worker.heads import MaskedPositionsPretraining

        self._leave_group()
        # What Ray Train's torch setup exports on a worker (one worker per node here).
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        self.rank, self.world = rank, world
        job = parse_manifest(MANIFEST)
        if self.model is None:
            fields = job.spec.model.bert_config(1000)
            self.model = MaskedPositionsPretraining(build_model(fields, nsp=False), nsp=False)
        plan = None
        if ckpt:
            plan = prepare_resume(ckpt, TAG, saved_world_size=saved_world, world_size=world, zero_stage=2,
                                  work_dir=work, is_converter=rank == 0, barrier=dist.barrier)
        self.engine = build_engine(job, self.model, world, on_gpu=False, load_universal=bool(plan and plan.load_universal))
        if plan:
            self.engine.load_checkpoint(plan.load_dir, tag=plan.tag)
        return time.time()

    def _leave_group(self) -> None:
        """Drop the old engine and process group, as the trainer's in-place re-form does."""
        from orchestrator.train.worker.regroup import leave_group

        self.engine = None
        leave_group()

    def steps(self, n: int) -> tuple[float, float]:
        """``n`` optimizer steps on this rank's own seeded batches; (end time, last micro-batch loss)."""
        import torch

        gen = torch.Generator().manual_seed(1000 + self.rank)
        torch.manual_seed(2000 + self.rank)  # dropout: the same masks whichever process runs the step
        for _ in range(n):
            for _ in range(self.engine.gradient_accumulation_steps()):
                ids = torch.randint(5, 1000, (2, 64), generator=gen)
                labels = torch.where(torch.rand(2, 64, generator=gen) < 0.15, ids, torch.full_like(ids, -100))
                out = self.engine(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  token_type_ids=torch.zeros_like(ids), labels=labels)
                self.engine.backward(out["loss"])
                self.engine.step()
        return time.time(), float(out["loss"])

    def save(self, ckpt: str) -> float:
        self.engine.save_checkpoint(ckpt, tag=TAG, save_latest=False)
        return time.time()


def _group(ray, actor_cls, world: int, ckpt: str | None = None, work: str | None = None,
           actors: list | None = None, saved_world: int | None = None):
    actors = actors or [actor_cls.remote() for _ in range(world)]
    port = free_port()
    ray.get([a.form.remote(r, world, port, ckpt, work, saved_world) for r, a in enumerate(actors)])
    return actors


def _first_step(ray, group) -> tuple[float, list[float]]:
    """When the group's first step ended on its slowest rank, and each rank's loss."""
    done = ray.get([a.steps.remote(1) for a in group])
    return max(t for t, _ in done), [loss for _, loss in done]


def one_round(ray, actor_cls, workers: int, scratch: Path) -> tuple[float, float]:
    ckpt = scratch / "ckpt"
    group = _group(ray, actor_cls, workers)
    ray.get([a.steps.remote(3) for a in group])
    saved = max(ray.get([a.save.remote(str(ckpt)) for a in group]))

    survivors = group[:-1]
    ray.kill(group[-1])  # the noticed node's worker ends with its node
    _group(ray, actor_cls, workers - 1, str(ckpt), str(scratch / "in-place"), actors=survivors,
           saved_world=workers)
    stepped, in_place_losses = _first_step(ray, survivors)
    in_place = stepped - saved

    for a in survivors:
        ray.kill(a)
    start = time.time()  # the restart pays no save either: the same checkpoint
    fresh = _group(ray, actor_cls, workers - 1, str(ckpt), str(scratch / "restart"), saved_world=workers)
    stepped, restart_losses = _first_step(ray, fresh)
    restart = stepped - start
    for a in fresh:
        ray.kill(a)
    shutil.rmtree(scratch, ignore_errors=True)
    # The same checkpoint and batches: a re-form in place that lost or mixed up any state shows here.
    if any(abs(a - b) > 1e-5 for a, b in zip(in_place_losses, restart_losses)):
        raise SystemExit(f"the in-place group trained differently: losses {in_place_losses} vs {restart_losses}")
    return in_place, restart


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import ray

    ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    actor_cls = ray.remote(num_cpus=1)(Rank)
    in_place, restart = [], []
    for i in range(args.repeats):
        a, b = one_round(ray, actor_cls, args.workers, Path(tempfile.mkdtemp(prefix="reform-")))
        print(f"round {i + 1}: {args.workers} -> {args.workers - 1} workers: in place {a:.2f} s, restart {b:.2f} s",
              flush=True)
        in_place.append(a)
        restart.append(b)
    ray.shutdown()
    a, b = statistics.median(in_place), statistics.median(restart)
    print(f"load average over the last minute {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"ratios: in_place_s={a:.2f} restart_s={b:.2f} restart_over_in_place={b / a:.2f}")


if __name__ == "__main__":
    main()
