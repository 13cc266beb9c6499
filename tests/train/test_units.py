"""Fast units: DeepSpeed config from a manifest, lr schedule, exit-code mapping, heartbeat client."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from orchestrator.contract import EndReason, ExitCode, Heartbeat, Resize, SkippedCheckpoint
from orchestrator.errors import CheckpointError, DataError, ManifestError, StaleAttemptError
from orchestrator.spec import parse_manifest
from orchestrator.train.driver import ending_of
from orchestrator.train.driver.elastic import InsufficientCapacity
from orchestrator.train.heartbeat import HeartbeatClient, Identity
from orchestrator.train.worker import FencedError, NanLossError
from orchestrator.train.worker.errors import NodeLost
from orchestrator.train.worker.engine import deepspeed_config, grad_accum_steps, lr_multiplier
from tests.recording_server import RecordingServer


def _job(**training):
    doc = {"apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "u"},
           "spec": {"data": {"shards": "/tmp/x", "seq_len": 64},
                    "training": {"max_steps": 10, "global_batch_size": 32, "micro_batch_size": 4, **training},
                    "deepspeed": {"zero_stage": 3, "config": {"zero_optimization": {"reduce_bucket_size": 1000},
                                                              "gradient_clipping": 0.5}},
                    "resources": {"workers": {"min": 1, "max": 2}},
                    "checkpoint": {"uri": "/tmp/c"}}}
    return parse_manifest(doc)


def test_deepspeed_config_keeps_global_batch_and_merges_raw_config_last():
    job = _job()
    for world, accum in [(1, 8), (2, 4), (4, 2), (8, 1)]:
        cfg = deepspeed_config(job, world, on_gpu=False)
        assert cfg["train_batch_size"] == 32 and cfg["gradient_accumulation_steps"] == accum
        assert cfg["train_micro_batch_size_per_gpu"] * world * accum == 32
    cfg = deepspeed_config(job, 2, on_gpu=False)
    assert cfg["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False,
                                        "reduce_bucket_size": 1000}
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["torch_adam"] is True
    assert "bf16" not in cfg and "fp16" not in cfg
    with pytest.raises(ManifestError, match="global_batch_size"):
        grad_accum_steps(job, 3)


def test_gpu_precisions_and_lamb():
    doc = _job().to_dict()
    doc["spec"]["resources"]["gpus_per_worker"] = 1
    # LAMB runs as DeepSpeed's fused kernel: fp16 or fp32 only, and without ZeRO (spec_rules).
    doc["spec"]["training"].update(precision="fp16", optimizer="lamb")
    doc["spec"]["deepspeed"]["zero_stage"] = 0
    cfg = deepspeed_config(parse_manifest(doc), 2, on_gpu=True)
    assert cfg["fp16"]["enabled"] and cfg["optimizer"]["type"] == "Lamb"
    doc["spec"]["training"].update(precision="bf16", optimizer="adamw")
    doc["spec"]["deepspeed"]["zero_stage"] = 2
    cfg = deepspeed_config(parse_manifest(doc), 2, on_gpu=True)
    assert cfg["bf16"] == {"enabled": True} and "torch_adam" not in cfg["optimizer"]["params"]


@pytest.mark.parametrize("schedule,expected", [
    ("linear", [0.25, 0.5, 0.75, 1.0, 1.0, 0.8333, 0.6667, 0.5, 0.3333, 0.1667]),
    ("cosine", [0.25, 0.5, 0.75, 1.0, 1.0, 0.9330, 0.75, 0.5, 0.25, 0.0670]),
    ("constant", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_lr_schedules(schedule, expected):
    fn = lr_multiplier(schedule, warmup=4, max_steps=10)
    assert [round(fn(s), 4) for s in range(10)] == expected


@pytest.mark.parametrize("exc,code,reason", [
    (NanLossError("nan"), ExitCode.NAN_LOSS, EndReason.NAN_LOSS),
    (ManifestError([("spec.x", "bad")]), ExitCode.USER_ERROR, EndReason.INVALID_CONFIG),
    (DataError("corrupt shard"), ExitCode.DATA_ERROR, EndReason.DATA_ERROR),
    (FencedError("409"), ExitCode.INFRASTRUCTURE, EndReason.INFRASTRUCTURE),
    (StaleAttemptError("stale"), ExitCode.INFRASTRUCTURE, EndReason.INFRASTRUCTURE),
    (CheckpointError("checkpoint URI not writable"), ExitCode.CHECKPOINT_ERROR, EndReason.CHECKPOINT_ERROR),
    (MemoryError(), ExitCode.OUT_OF_MEMORY, EndReason.OUT_OF_MEMORY),
    (RuntimeError("??"), ExitCode.INFRASTRUCTURE, EndReason.INFRASTRUCTURE),
    (NodeLost("node 10.0.0.7 died"), ExitCode.INFRASTRUCTURE, EndReason.NODE_LOST),
    (InsufficientCapacity("fewer than 2 workers fit"), ExitCode.INFRASTRUCTURE, EndReason.NODE_LOST),
])
def test_exit_codes(exc, code, reason):
    assert ending_of(exc)[:2] == (code, reason)


def test_exit_code_found_inside_ray_worker_group_error():
    import torch
    from ray.train import WorkerGroupError

    wrapped = WorkerGroupError("boom", {1: NanLossError("nan on rank 1"), 0: RuntimeError("peer died")})
    assert ending_of(wrapped)[0] == ExitCode.NAN_LOSS
    oom = WorkerGroupError("boom", {0: torch.OutOfMemoryError("CUDA out of memory")})
    assert ending_of(oom)[0] == ExitCode.OUT_OF_MEMORY


def test_identity_from_env_and_token_never_in_repr():
    ident = Identity.from_env("job-a", {"BERTCTL_ATTEMPT": "3", "BERTCTL_ATTEMPT_TOKEN": "tok-SECRET",
                                        "BERTCTL_MANAGER_URL": "http://127.0.0.1:1"})
    assert (ident.job_id, ident.attempt, ident.token) == ("job-a", 3, "tok-SECRET")
    assert "SECRET" not in repr(ident) and "SECRET" not in str(ident)
    assert Identity.from_env("job-b", {}).attempt == 1
    with pytest.raises(ManifestError):
        Identity.from_env("x", {"BERTCTL_ATTEMPT": "zero"})


def _wait(cond, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end and not cond():
        time.sleep(0.02)
    return cond()


def test_heartbeats_reach_the_manager_with_the_bearer_token(caplog):
    mgr = RecordingServer()
    try:
        client = HeartbeatClient(Identity("job-a", 2, mgr.url, "tok-SECRET"))
        with caplog.at_level(logging.DEBUG):
            client.send(Heartbeat(attempt=2, step=5, loss=1.5))
            assert _wait(lambda: len(mgr.requests) == 1)
            assert client.send_final(Heartbeat(attempt=2, status="succeeded", reason=EndReason.SUCCEEDED, step=9))
        path, body, auth = mgr.requests[0]
        assert path == "/v1/jobs/job-a/heartbeat" and auth == "Bearer tok-SECRET"
        assert body["step"] == 5 and body["attempt"] == 2
        assert mgr.requests[-1][1]["status"] == "succeeded"
        assert "SECRET" not in caplog.text
    finally:
        mgr.close()


def test_unreachable_manager_never_blocks_training(caplog, monkeypatch):
    import httpx

    # The network call is held at a gate: every send must return while it is still held.
    gate, posting, posted = threading.Event(), threading.Event(), threading.Event()
    real_post = httpx.Client.post

    def gated_post(*args, **kwargs):
        posting.set()
        gate.wait(60)  # a bound so a blocking send fails the test instead of hanging it; never reached
        try:
            return real_post(*args, **kwargs)
        finally:
            posted.set()

    monkeypatch.setattr(httpx.Client, "post", gated_post)
    client = HeartbeatClient(Identity("job-a", 1, "http://127.0.0.1:9", "tok-SECRET"), timeout_s=0.5)
    with caplog.at_level(logging.WARNING):
        for step in range(200):
            client.send(Heartbeat(attempt=1, step=step))
        assert posting.wait(10) and not posted.is_set()  # sends never wait on the network
        gate.set()
        assert _wait(lambda: "unreachable" in caplog.text)
        client.close()
    assert caplog.text.count("unreachable") == 1 and "SECRET" not in caplog.text
    assert not client.fenced.is_set()


def test_slow_manager_gets_coalesced_heartbeats():
    mgr = RecordingServer(delay_s=0.3)
    try:
        client = HeartbeatClient(Identity("job-a", 1, mgr.url, "t"))
        for step in range(1, 51):
            client.send(Heartbeat(attempt=1, step=step))
        assert _wait(lambda: mgr.requests and mgr.requests[-1][1]["step"] == 50)
        client.close()
        assert len(mgr.requests) < 50  # older pending beats were replaced by newer ones
    finally:
        mgr.close()


def test_409_fences_the_attempt():
    mgr = RecordingServer(status=409)
    try:
        client = HeartbeatClient(Identity("job-a", 1, mgr.url, "t"))
        client.send(Heartbeat(attempt=1, step=1))
        assert client.fenced.wait(10)
        client.close()
    finally:
        mgr.close()


def test_repeated_records_travel_until_a_heartbeat_carrying_them_is_taken():
    """Resizes and skipped checkpoints ride every heartbeat the loop builds; the client drops each
    once the manager answered 200 to a heartbeat with it, and keeps it while the manager fails."""
    resize = Resize(n=1, kind="grow", from_world=1, to_world=2, resumed_from_step=8)
    skipped = SkippedCheckpoint(step=4, uri="s3://b/ckpt/step-4", reason="truncated")
    mgr = RecordingServer(status=503)
    try:
        client = HeartbeatClient(Identity("job-a", 1, mgr.url, "t"))
        for step in (9, 10):  # refused: the records stay in the next heartbeat
            client.send(Heartbeat(attempt=1, step=step, resizes=[resize], skipped_checkpoints=[skipped]))
            assert _wait(lambda: mgr.requests and mgr.requests[-1][1]["step"] == step)
        mgr.status = 200
        for step in (11, 12, 13):
            later = [resize, Resize(n=2, kind="grow", from_world=2, to_world=3, resumed_from_step=12)] \
                if step == 13 else [resize]
            client.send(Heartbeat(attempt=1, step=step, resizes=later, skipped_checkpoints=[skipped]))
            assert _wait(lambda: mgr.requests and mgr.requests[-1][1]["step"] == step)
        client.close()
    finally:
        mgr.close()
    carried = {body["step"]: ([r["n"] for r in body.get("resizes", [])], "skipped_checkpoints" in body)
               for _, body, _ in mgr.requests}
    assert carried == {9: ([1], True), 10: ([1], True), 11: ([1], True), 12: ([], False), 13: ([2], False)}


def test_one_connection_carries_every_heartbeat():
    mgr = RecordingServer()
    try:
        client = HeartbeatClient(Identity("job-a", 1, mgr.url, "t"))
        for step in range(1, 6):
            client.send(Heartbeat(attempt=1, step=step))
            assert _wait(lambda: mgr.requests and mgr.requests[-1][1]["step"] == step)
        client.close()
    finally:
        mgr.close()
    assert len(mgr.requests) == 5 and len(mgr.client_ports) == 1


def test_no_manager_url_is_a_silent_no_op():
    client = HeartbeatClient(Identity("job-a"))
    client.send(Heartbeat(attempt=1))
    assert client.send_final(Heartbeat(attempt=1, status="succeeded")) is False


@pytest.mark.parametrize("dashboard", [True, False], ids=["with-dashboard", "without-dashboard"])
def test_the_trainer_starts_no_dataset_manager_but_keeps_its_backend_and_callbacks(tmp_path, monkeypatch, dashboard):
    """Ray Train's DatasetManager actor is a process start in every recovery; we pass no Ray Dataset.
    The placement-group cleaner stays only where a dashboard can answer its queries (KubeRay)."""
    from pathlib import Path

    from orchestrator.spec import load_manifest
    from orchestrator.train.driver import launch

    monkeypatch.setattr(launch, "_cluster_has_no_dashboard", lambda: not dashboard)
    root = Path(__file__).resolve().parents[2]
    trainer = launch.build_trainer(load_manifest(str(root / "jobs" / "quickstart.yaml")), {}, tmp_path / "ray",
                                   tmp_path / "metrics.jsonl", "t")
    names = [type(c).__name__ for c in trainer._create_default_callbacks()]
    assert "DatasetsCallback" not in names
    assert {"BackendSetupCallback", "UserCallbackHandler"} <= set(names)
    assert ("PlacementGroupCleanerCallback" in names) is dashboard


def test_startup_phases_are_sent_as_starting_heartbeats_at_each_change_only():
    mgr = RecordingServer()
    try:
        client = HeartbeatClient(Identity("job-a", 3, mgr.url, "t"))
        client.starting("joining Ray")
        assert _wait(lambda: len(mgr.requests) == 1)
        client.starting("joining Ray")  # the same phase again: nothing sent
        client.starting("waiting for 2 worker(s)")
        client.close()  # delivers what is pending
        bodies = [b for _, b, _ in mgr.requests]
        assert [(b["status"], b["phase"], b["attempt"]) for b in bodies] == [
            ("starting", "joining Ray", 3), ("starting", "waiting for 2 worker(s)", 3)]
        assert all("step" not in b or b["step"] == 0 for b in bodies)
    finally:
        mgr.close()
