"""Recovery, checkpoint upload and goodput of the real trainer (Ray + DeepSpeed on CPU).

1. upload: the same checkpoint-sized bytes to S3 (moto in its own process on loopback) through the
   checkpoint store (sha256 + upload, what a synchronous save does), through the AsyncUploader
   (4 threads, what async_upload does), and with raw boto3 ``upload_file``; best of 3 interleaved rounds.
2. stall: the trainer (its own process, checkpoints on S3) with async_upload off and on; the stall
   is how long a step waited for each checkpoint (``checkpoint_stall_s`` in the metrics rows).
3. recovery / goodput / steps lost: jobs through an embedded manager (loopback HTTP, SQLite, local
   backend): one SIGTERM'd at step >= N (a preemption every N steps), one never interrupted.
   Kill -> first resumed step is split into detect (kill -> attempt recorded ended: the
   preemption checkpoint, exit, the supervisor noticing), relaunch (-> the new attempt's loop
   starts looking for a checkpoint: process, Ray, worker group), load (-> restored) and first
   step (-> the manager receives the first new step).

    .venv/bin/python bench/recovery.py [--upload-mb 96] [--every-n 10]

The last line is
``ratios: upload/boto3=<x> stall/async_vs_sync=<x> recover_s=<x> steps_lost_sigterm=<n>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.s3server import free_port, start_moto_process  # noqa: E402

TIMING = re.compile(r"timing: (load_start|loaded)=([0-9.]+)")



def s3_env(port: int) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                      AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}", AWS_EC2_METADATA_DISABLED="true",
                      RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false",
                      # the timing lines of both ranks differ only in numbers: Ray would fold them
                      RAY_DEDUP_LOGS="0")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")


# ----- 1. upload throughput ---------------------------------------------------------------------
def upload_bench(tmp: Path, total_mb: int, rounds: int = 3) -> dict[str, float]:
    import boto3

    from orchestrator.train.checkpoint import CheckpointStore
    from orchestrator.train.checkpoint import AsyncUploader

    src = tmp / "upload-src"
    src.mkdir()
    sizes = [total_mb // 2, total_mb // 4, total_mb // 8, total_mb - total_mb // 2 - total_mb // 4 - total_mb // 8]
    for i, mb in enumerate(sizes):  # like one rank's model states + optimizer shards
        (src / f"file-{i}.pt").write_bytes(os.urandom(mb << 20))
    nbytes = sum(p.stat().st_size for p in src.iterdir())
    client = boto3.client("s3")
    best = {"store": 0.0, "async": 0.0, "boto3": 0.0}
    for r in range(rounds):
        t0 = time.perf_counter()
        for p in sorted(src.iterdir()):
            client.upload_file(str(p), "bench", f"raw/{r}/{p.name}")
        best["boto3"] = max(best["boto3"], nbytes / (time.perf_counter() - t0))
        store = CheckpointStore(f"s3://bench/store-{r}")
        t0 = time.perf_counter()
        store.upload_dir(src, 1, 1)
        best["store"] = max(best["store"], nbytes / (time.perf_counter() - t0))
        up = AsyncUploader(max_workers=4)
        t0 = time.perf_counter()
        up.wait_all(up.submit_dir(src, f"s3://bench/async-{r}/step-00000001", prefix="attempt-00000001"))
        best["async"] = max(best["async"], nbytes / (time.perf_counter() - t0))
        up.close()
    return {k: v / 1e6 for k, v in best.items()} | {"mb": nbytes / 1e6}


# ----- manifests ---------------------------------------------------------------------------------
def manifest(shards: Path, ckpt: str, name: str, steps: int, every: int, *, big: bool = False,
             async_upload: bool = False) -> dict:
    hidden, layers = (256, 4) if big else (64, 2)
    return {
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": name},
        "spec": {
            "model": {"preset": "bert-tiny", "overrides": {
                "num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": 4,
                "intermediate_size": hidden * 4, "max_position_embeddings": 64}},
            "tokenizer": {"vocab_size": 1000},
            "data": {"shards": str(shards), "seq_len": 64, "seed": 7, "nsp": True},
            "training": {"max_steps": steps, "global_batch_size": 16, "micro_batch_size": 8, "lr": 2e-3,
                         "warmup_steps": 2, "schedule": "constant"},
            "deepspeed": {"zero_stage": 2},
            "resources": {"workers": 2, "cpus_per_worker": 1},
            "checkpoint": {"uri": ckpt, "every_steps": every, "keep_last": 2, "async_upload": async_upload,
                           "preemption_deadline_s": 25},
            "recovery": {"max_restarts": 3, "backoff_s": 0, "heartbeat_timeout_s": 300},
        },
    }


# ----- 2. stall per checkpoint: sync vs async ----------------------------------------------------
def stall_run(tmp: Path, shards: Path, async_upload: bool) -> tuple[float, int]:
    name = "async" if async_upload else "sync"
    path = tmp / f"stall-{name}.yaml"
    path.write_text(yaml.safe_dump(manifest(shards, f"s3://bench/stall-{name}", f"stall-{name}", 15, 5, big=True,
                                            async_upload=async_upload)))
    work, metrics = tmp / f"work-{name}", tmp / f"metrics-{name}.jsonl"
    env = {**os.environ, "BERTCTL_JOB_ID": f"stall-{name}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.train", "--manifest", str(path), "--work-dir",
                           str(work), "--metrics-file", str(metrics), "--no-prepare"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"stall run ({name}) exited {proc.returncode}: {proc.stdout.decode()[-2000:]}")
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    stalls = [r["checkpoint_stall_s"] for r in rows if "checkpoint_stall_s" in r]
    return sum(stalls) / len(stalls), len(stalls)


# ----- 3. recovery / goodput through the manager ---------------------------------------------------
class Jobs:
    def __init__(self, em):
        import httpx

        self.em = em
        self.http = httpx.Client(base_url=em.url, headers={"Authorization": f"Bearer {em.token}"}, timeout=30)

    def submit(self, doc: dict) -> str:
        r = self.http.post("/v1/jobs", content=yaml.safe_dump(doc))
        r.raise_for_status()
        return r.json()["id"]

    def get(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, until, timeout_s: float = 600) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            j = self.get(job_id)
            if until(j):
                return j
            if j["phase"] in ("FAILED", "CANCELLED", "SUCCEEDED") or time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} {j['phase']} at step {j['step']}: {j.get('message')}")
            time.sleep(0.1)

    def trainer_pid(self, job_id: str, n: int) -> int:
        wrapper = int((self.em.data_dir / "jobs" / job_id / f"attempt-{n}" / "pid").read_text())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == wrapper and "orchestrator.train" in cmd:
                return int(entry.name)
        raise RuntimeError("trainer process not found")

    def timings(self, job_id: str, n: int) -> dict[str, float]:
        text = (self.em.data_dir / "jobs" / job_id / f"attempt-{n}" / "trainer.log").read_text(errors="replace")
        found: dict[str, float] = {}
        for key, value in TIMING.findall(text):
            found.setdefault(key, float(value))  # rank 0's line comes first or within ms of the other
        return found


def preempted_job(jobs: Jobs, shards: Path, tmp: Path, steps: int, every_n: int, ckpt_every: int) -> dict:
    """SIGTERM the trainer each time it reached N more steps; returns the job and the recovery split."""
    job_id = jobs.submit(manifest(shards, str(tmp / "ckpt-pre"), "preempted", steps, ckpt_every, big=True))
    splits, n = [], 1
    while True:
        base = (jobs.get(job_id)["attempts"] or [{}])[-1].get("resumed_from_step") or 0
        target = base + every_n
        if target >= steps:
            break
        jobs.wait(job_id, lambda j: j["current_attempt"] == n and j["step"] >= target)
        killed_at = time.time()
        os.kill(jobs.trainer_pid(job_id, n), signal.SIGTERM)
        try:
            j = jobs.wait(job_id, lambda j: j["current_attempt"] == n + 1
                          and (j["attempts"][-1].get("first_step") is not None))
        except RuntimeError as exc:  # the notice did not stop the attempt: say so, keep the logs
            keep = Path(tempfile.mkdtemp(prefix="bench-recovery-logs-"))
            shutil.copytree(jobs.em.data_dir / "jobs", keep / "jobs", dirs_exist_ok=True)
            print(f"# SIGTERM at step >= {target} did not end attempt {n}: {exc} (logs in {keep})", flush=True)
            break
        prev = j["attempts"][-2]
        t = jobs.timings(job_id, n + 1)
        rec = j["goodput"]["attempts"][-1]["recovery_s"] or 0.0  # previous end -> first new step (manager)
        splits.append({"detect": prev["ended_at"] - killed_at, "relaunch": t["load_start"] - prev["ended_at"],
                       "load": t["loaded"] - t["load_start"],
                       "first_step": rec - (t["loaded"] - prev["ended_at"]),
                       "total": prev["ended_at"] - killed_at + rec, "steps_lost": prev["steps_lost"]})
        n += 1
    return {"job": jobs.wait(job_id, lambda j: j["phase"] == "SUCCEEDED"), "splits": splits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upload-mb", type=int, default=96)
    ap.add_argument("--every-n", type=int, default=30, help="steps between preemptions")
    ap.add_argument("--steps", type=int, default=60, help="max_steps of the goodput jobs")
    ap.add_argument("--ckpt-every", type=int, default=20, help="checkpoint interval of the goodput jobs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    moto = start_moto_process(free_port())
    try:
        s3_env(int(moto.args[-1]))
        from orchestrator.manager.embedded import EmbeddedManager
        from tests.train.conftest import build_corpus

        shards = build_corpus(tmp / "corpus")
        up = upload_bench(tmp, args.upload_mb)
        sync_stall, n_sync = stall_run(tmp, shards, async_upload=False)
        async_stall, n_async = stall_run(tmp, shards, async_upload=True)
        with EmbeddedManager(data_dir=tmp / "manager", interval_s=0.1) as em:
            jobs = Jobs(em)
            pre = preempted_job(jobs, shards, tmp, args.steps, args.every_n, args.ckpt_every)
            calm_id = jobs.submit(manifest(shards, str(tmp / "ckpt-calm"), "calm", args.steps, args.ckpt_every,
                                           big=True))
            calm = jobs.wait(calm_id, lambda j: j["phase"] == "SUCCEEDED")
        report(args, up, (sync_stall, n_sync), (async_stall, n_async), pre, calm)
    finally:
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, up, sync, async_, pre, calm) -> None:
    sp = pre["splits"]
    keys = ("detect", "relaunch", "load", "first_step", "total", "steps_lost")
    mean = {k: (sum(s[k] for s in sp) / len(sp) if sp else float("nan")) for k in keys}
    g_pre, g_calm = pre["job"]["goodput"], calm["goodput"]
    rows = [
        (f"upload {up['mb']:.0f} MB to S3: checkpoint store (sha256 + upload, sync save path)", f"{up['store']:.1f} MB/s"),
        ("upload: AsyncUploader, 4 threads (async save path)", f"{up['async']:.1f} MB/s"),
        ("upload: raw boto3 upload_file, same bytes", f"{up['boto3']:.1f} MB/s"),
        (f"stall per checkpoint, synchronous ({sync[1]} ckpts, 2 workers, ZeRO-2, S3)", f"{sync[0]:.3f} s"),
        (f"stall per checkpoint, async upload ({async_[1]} ckpts)", f"{async_[0]:.3f} s"),
        (f"recovery after SIGTERM ({len(sp)}x): detect", f"{mean['detect']:.2f} s"),
        ("recovery: relaunch (process, Ray, worker group)", f"{mean['relaunch']:.2f} s"),
        ("recovery: load checkpoint", f"{mean['load']:.2f} s"),
        ("recovery: first step", f"{mean['first_step']:.2f} s"),
        ("recovery: kill -> first resumed step", f"{mean['total']:.2f} s"),
        ("steps lost on SIGTERM (per preemption)", ", ".join(str(s["steps_lost"]) for s in sp)),
        (f"goodput, no preemption ({args.steps} steps, checkpoint every {args.ckpt_every})", f"{g_calm['productive_fraction']:.3f} of {g_calm['wall_s']:.1f} s"),
        (f"goodput, preemption every {args.every_n} steps", f"{g_pre['productive_fraction']:.3f} of {g_pre['wall_s']:.1f} s"),
    ]
    width = max(len(a) for a, _ in rows)
    print(f"{'measure':<{width}} | value")
    print(f"{'-' * width}-|-------")
    for a, b in rows:
        print(f"{a:<{width}} | {b}")
    lost = max((s["steps_lost"] for s in sp), default="n/a")
    print(f"ratios: upload/boto3={up['store'] / up['boto3']:.2f} stall/async_vs_sync={async_[0] / sync[0]:.3f} "
          f"recover_s={mean['total']:.1f} steps_lost_sigterm={lost}")


if __name__ == "__main__":
    main()
