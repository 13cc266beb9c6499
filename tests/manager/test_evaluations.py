"""spec.evaluation end to end: a real manager (HTTP, SQLite, supervisor, local launcher) runs real
evaluation processes (`python -m orchestrator.finetune.evaluate`) on real committed checkpoints of a
tiny BERT, and the scores reach the API, the events and `bertctl status`; a failing task is an event
and never fails the pretraining job. Plus the pure rules (what is due, what runs next) as tables
and the manifest's validation errors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.contract import CheckpointRef, Heartbeat
from orchestrator.errors import ManifestError
from orchestrator.manager.auth import hash_token
from orchestrator.manager.backends.evaluation_local import EvaluationStatus
from orchestrator.manager.client import ManagerClient
from orchestrator.manager.evaluations import EvaluationRunner, is_due, job_evaluations, pick_next
from orchestrator.manager.heartbeats import Outcome, apply_heartbeat
from orchestrator.manager.server import Manager, ManagerConfig, ServerThread
from orchestrator.spec import parse_manifest

from tests.finetune.conftest import MODEL_FIELDS, write_classification, write_conll, write_vocab
from tests.manager.conftest import make_manifest
from tests.manager.test_cli import bertctl

ADMIN = "admin-" + "e" * 40
EVAL_TRAINER = [sys.executable, str(Path(__file__).with_name("eval_trainer.py"))]
TERMINAL = {"succeeded", "failed", "skipped", "abandoned"}


def write_checkpoints(uri: str, work: Path, steps: list[int]) -> None:
    """Committed checkpoints of one tiny random BertForMaskedLM at each step (the trainer's layout)."""
    import torch
    from transformers import BertTokenizerFast

    from orchestrator.model import build_model
    from orchestrator.train.checkpoint.store import CheckpointStore, TrainState

    local = work / "ckpt-files"
    (local / "tokenizer").mkdir(parents=True)
    (local / "ds").mkdir()
    vocab = write_vocab(work / "vocab.txt")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    tokenizer.save_pretrained(str(local / "tokenizer"))
    (local / "tokenizer" / "vocab.txt").write_bytes(vocab.read_bytes())
    fields = {**MODEL_FIELDS, "vocab_size": len(tokenizer)}
    torch.manual_seed(0)
    torch.save({"module": build_model(fields, nsp=False).state_dict()}, local / "ds" / "mp_rank_00_model_states.pt")
    store = CheckpointStore(uri)
    store.register_attempt(1)
    for step in steps:
        state = TrainState(step=step, tokens_seen=0, cursor={}, world_size=1, attempt=1, zero_stage=0,
                           global_batch_size=4, job_id="eval-fixture", model_config=fields, nsp=False)
        (local / "state.json").write_bytes(state.to_json())
        store.commit(step, 1, 1, store.upload_dir(local, step, 1))


def evaluation_spec(data: Path) -> dict:
    budget = {"max_train_examples": 16, "max_seconds": 120}
    small = {"batch_size": 8, "max_length": 32, "budget": budget}
    return {"every_checkpoints": 2, "resources": {"cpus": 1}, "tasks": [
        {"name": "sentiment", "task": "classification", "train": str(data / "train.jsonl"),
         "validation": str(data / "valid.jsonl"), **small},
        {"name": "ner", "task": "token-classification", "train": str(data / "train.conll"),
         "validation": str(data / "valid.conll"), **small},
        {"name": "broken", "task": "classification", "train": str(data / "train.jsonl"),
         "validation": str(data / "missing.jsonl"), **small}]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One job (max_steps 6, a checkpoint every 2 steps, every 2nd checkpoint evaluated) run to the end
    of its evaluations; yields (manager, job id, GET evaluations, events)."""
    tmp = tmp_path_factory.mktemp("evaluations")
    data = tmp / "data"
    data.mkdir()
    write_classification(data / "train.jsonl", 32, 1), write_classification(data / "valid.jsonl", 12, 2)
    write_conll(data / "train.conll", 32, 1), write_conll(data / "valid.conll", 12, 2)
    manifest = make_manifest(tmp, name="evaluated", max_steps=6, every=2, labels={"fake-step-s": "0.2"})
    manifest["spec"]["evaluation"] = evaluation_spec(data)
    write_checkpoints(manifest["spec"]["checkpoint"]["uri"], tmp, [2, 4, 6])
    manager = Manager(ManagerConfig(port=0, data_dir=tmp / "manager", admin_token=ADMIN, trainer_command=EVAL_TRAINER,
                                    interval_s=0.2, cancel_grace_s=5.0))
    thread = ServerThread(manager).start()
    client = ManagerClient(manager.url, ADMIN)
    try:
        job_id = client.submit(yaml.safe_dump(manifest))["id"]
        found = _wait_evaluations_done(client, job_id, timeout_s=240)
        yield manager, job_id, found, client.events(job_id)
    finally:
        client.close()
        thread.stop()


def _wait_evaluations_done(client: ManagerClient, job_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = client.evaluations(job_id)
        steps = {e["step"]: e["state"] for e in found["evaluations"]}
        if client.get(job_id)["phase"] == "SUCCEEDED" and 6 in steps and set(steps.values()) <= TERMINAL:
            return found
        time.sleep(0.5)
    raise AssertionError(f"evaluations of {job_id} not done: {client.evaluations(job_id)}")


def test_scores_of_due_checkpoints_reach_the_api_and_the_job_still_succeeds(finished):
    manager, job_id, found, _ = finished
    by_step = {e["step"]: e for e in found["evaluations"]}
    assert 2 not in by_step  # the 1st checkpoint: not due with every_checkpoints 2
    final = by_step[6]  # the final checkpoint is always evaluated
    tasks = {t["task"]: t for t in final["tasks"]}
    assert tasks["sentiment"]["status"] == "succeeded" and tasks["sentiment"]["kind"] == "classification"
    assert set(tasks["sentiment"]["metrics"]) >= {"accuracy"}
    assert 0.0 <= tasks["sentiment"]["metrics"]["accuracy"] <= 1.0
    assert tasks["sentiment"]["examples_seen"] == 16 and tasks["sentiment"]["validation_examples"] == 12
    assert tasks["ner"]["status"] == "succeeded" and "f1" in tasks["ner"]["metrics"]
    assert tasks["broken"]["status"] == "failed" and "missing.jsonl" in tasks["broken"]["message"]
    assert final["state"] == "failed" and "broken" in final["message"]
    # Step 4 is due too: evaluated, or skipped because step 6 was due before it could start.
    assert by_step[4]["state"] in {"failed", "skipped"}
    if by_step[4]["state"] == "failed":
        assert {t["task"]: t["status"] for t in by_step[4]["tasks"]}["sentiment"] == "succeeded"
    assert found["latest"]["sentiment"]["step"] == 6
    assert found["latest"]["ner"]["metrics"] == tasks["ner"]["metrics"]
    assert "broken" not in found["latest"]
    assert manager.store.get_job(job_id)["phase"] == "SUCCEEDED"


def test_events_say_started_scored_failed_and_finished(finished):
    _, _, _, events = finished
    by_type = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    assert any(e["data"]["step"] == 6 for e in by_type["evaluation_due"])
    assert any(e["data"]["step"] == 6 for e in by_type["evaluation_started"])
    scored = [e for e in by_type["evaluation_scores"] if e["data"]["step"] == 6]
    assert {e["data"]["task"] for e in scored} == {"sentiment", "ner"}
    failed = [e for e in by_type["evaluation_failed"] if e["data"].get("task") == "broken" and e["data"]["step"] == 6]
    assert failed and "missing.jsonl" in failed[0]["message"]
    assert any(e["data"]["step"] == 6 and "sentiment accuracy" in e["message"] for e in by_type["evaluation_finished"])
    # the job's own end is not touched by a failed evaluation
    assert any(e["type"] == "succeeded" for e in events)


def test_bertctl_status_shows_the_newest_scores_per_task(finished):
    manager, job_id, found, _ = finished
    r = bertctl("status", job_id, url=manager.url, token=ADMIN)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ") and line.split()}
    acc = found["latest"]["sentiment"]["metrics"]["accuracy"]
    assert "evaluation every 2 checkpoint(s)" in r.stdout
    assert "step 6" in lines["sentiment"] and f"accuracy {acc:.4f}" in lines["sentiment"]
    assert "step 6" in lines["ner"] and "f1" in lines["ner"]
    assert "failed at step 6" in lines["broken"] and "missing.jsonl" in lines["broken"]


def test_only_the_evaluations_own_token_may_report(finished):
    manager, job_id, found, _ = finished
    ev = next(e for e in found["evaluations"] if e["step"] == 6)
    body = {"evaluation_id": ev["id"], "step": 6, "task": "sentiment", "status": "succeeded",
            "metrics": {"accuracy": 1.0}}
    url = f"{manager.url}/v1/jobs/{job_id}/evaluations"
    assert httpx.post(url, json=body).status_code == 401
    admin = httpx.post(url, json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.status_code == 401 and "evaluation's token" in admin.json()["detail"]
    assert httpx.get(url).status_code == 401
    unknown = httpx.get(f"{manager.url}/v1/jobs/nope/evaluations", headers={"Authorization": f"Bearer {ADMIN}"})
    assert unknown.status_code == 404
    after = ManagerClient(manager.url, ADMIN).evaluations(job_id)
    assert after["latest"] == found["latest"]  # nothing changed


@pytest.mark.parametrize("ordinal,step,every,max_steps,due", [
    (1, 2, 2, 6, False), (2, 4, 2, 6, True), (3, 6, 2, 6, True),  # the final one always
    (1, 100, 1, 1000, True), (5, 500, 3, 1000, False), (6, 600, 3, 1000, True)])
def test_which_checkpoints_are_due(ordinal, step, every, max_steps, due):
    assert is_due(ordinal, step, every, max_steps) is due


@pytest.mark.parametrize("pending,running,launch,skip", [
    ([], False, None, []), ([4], True, None, []), ([4], False, 4, []),
    ([2, 4, 6], False, 6, [2, 4]), ([2, 6], True, None, [])])  # while one runs, nothing is skipped yet
def test_one_evaluation_at_a_time_newest_first(pending, running, launch, skip):
    assert pick_next(pending, running) == (launch, skip)


def _problems(tmp_path, evaluation) -> dict[str, str]:
    manifest = make_manifest(tmp_path)
    manifest["spec"]["evaluation"] = evaluation
    with pytest.raises(ManifestError) as err:
        parse_manifest(manifest)
    return dict(err.value.problems)


def test_manifest_errors_name_the_field_and_the_fix(tmp_path):
    task = {"name": "ner", "task": "token-classification", "train": "t.conll", "validation": "v.conll"}
    got = _problems(tmp_path, {"tasks": [task, dict(task)], "every_checkpoints": 0})
    assert "unique" in got["spec.evaluation.tasks"] and "rename" in got["spec.evaluation.tasks"]
    assert "spec.evaluation.every_checkpoints" in got
    got = _problems(tmp_path, {"tasks": [{**task, "task": "ner", "budget": {"max_seconds": 0, "epoch": 1}}]})
    assert "classification" in got["spec.evaluation.tasks.0.task"]
    assert "spec.evaluation.tasks.0.budget.max_seconds" in got
    assert "unknown field" in got["spec.evaluation.tasks.0.budget.epoch"]
    got = _problems(tmp_path, {"tasks": [{"name": "Bad Name", "task": "classification", "train": "t.csv"}]})
    assert "lowercase" in got["spec.evaluation.tasks.0.name"]
    assert "add it" in got["spec.evaluation.tasks.0.validation"]
    assert "add it" in _problems(tmp_path, {"every_checkpoints": 2})["spec.evaluation.tasks"]


def test_a_valid_evaluation_is_kept_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = make_manifest(tmp_path)
    manifest["spec"]["evaluation"] = {"tasks": [{"name": "qa", "task": "question-answering", "train": "q.json",
                                                 "validation": "s3://bucket/v.json"}]}
    job = parse_manifest(manifest).with_absolute_paths()
    task = job.spec.evaluation.tasks[0]
    assert task.train == str(tmp_path / "q.json") and task.validation == "s3://bucket/v.json"
    assert task.budget.max_seconds == 900 and job.spec.evaluation.every_checkpoints == 1


# -- the runner against a real store, its launcher a recording stand-in ---------------------------

class RecordingLauncher:
    def __init__(self):
        self.launched, self.terminated, self.exit_code = [], [], None

    def launch(self, req):
        self.launched.append(req)
        return str(1000 + req.step)

    def poll(self, job_id, step, handle):
        return EvaluationStatus(self.exit_code is None, exit_code=self.exit_code)

    def terminate(self, job_id, step, handle, grace_s):
        self.terminated.append(step)

    def log_path(self, job_id, step):
        return f"/logs/{job_id}/{step}"

    def cleanup(self, job_id, step, handle=""):
        pass


def _running_job(store, tmp_path, every: int):
    manifest = make_manifest(tmp_path, max_steps=10, every=2)
    manifest["spec"]["evaluation"] = {"every_checkpoints": every, "tasks": [
        {"name": "sentiment", "task": "classification", "train": "t.jsonl", "validation": "v.jsonl"}]}
    job, _ = store.create_job(parse_manifest(manifest).to_dict(), "local", 1.0)
    assert store.start_attempt(job["id"], 1, hash_token("attempt-token"), 1.0)
    store.record_launch(job["id"], 1, "123", "", 1.0)
    return job["id"]


def _commit(store, job_id, step, now):
    ref = CheckpointRef(step=step, uri=f"/ckpt/step-{step:08d}", world_size=1)
    hb = Heartbeat(attempt=1, step=step, checkpoint=ref)
    assert apply_heartbeat(store, job_id, hb, now) is Outcome.OK


def test_newest_due_checkpoint_runs_older_ones_are_skipped_and_a_cancel_abandons(store, tmp_path):
    job_id = _running_job(store, tmp_path, every=1)
    launcher = RecordingLauncher()
    runner = EvaluationRunner(store, {"local": launcher}, lambda: "http://manager")
    _commit(store, job_id, 2, 2.0)
    _commit(store, job_id, 4, 3.0)
    runner.reconcile_once(4.0)
    states = {e["step"]: e["state"] for e in job_evaluations(store, job_id)["evaluations"]}
    assert states == {2: "skipped", 4: "running"}
    req = launcher.launched[0]
    assert req.step == 4 and req.token not in " ".join(req.argv("@tasks.json"))
    _commit(store, job_id, 6, 5.0)
    runner.reconcile_once(6.0)  # one at a time: step 6 waits while step 4 runs
    assert len(launcher.launched) == 1
    store.request_cancel(job_id, 7.0)
    runner.reconcile_once(8.0)
    states = {e["step"]: e["state"] for e in job_evaluations(store, job_id)["evaluations"]}
    assert states == {2: "skipped", 4: "abandoned", 6: "abandoned"} and launcher.terminated == [4]
    assert any(e["type"] == "evaluation_abandoned" for e in store.events(job_id))


def test_a_process_that_dies_without_reporting_fails_its_evaluation_not_the_job(store, tmp_path):
    job_id = _running_job(store, tmp_path, every=2)
    launcher = RecordingLauncher()
    runner = EvaluationRunner(store, {"local": launcher}, lambda: "http://manager")
    _commit(store, job_id, 2, 2.0)
    runner.reconcile_once(3.0)
    assert launcher.launched == []  # the 1st checkpoint is not due with every_checkpoints 2
    _commit(store, job_id, 4, 4.0)
    runner.reconcile_once(5.0)
    launcher.exit_code = 1
    runner.reconcile_once(6.0)
    ev = job_evaluations(store, job_id)["evaluations"][0]
    assert ev["step"] == 4 and ev["state"] == "failed" and "code 1" in ev["message"]
    assert ev["tasks"][0]["status"] == "failed" and "/logs/" in ev["tasks"][0]["message"]
    failed = [e for e in store.events(job_id) if e["type"] == "evaluation_failed"]
    assert failed and "code 1" in failed[0]["message"]
    assert store.get_job(job_id)["phase"] == "RUNNING"


def test_a_replica_that_does_not_lead_launches_nothing(store, tmp_path):
    job_id = _running_job(store, tmp_path, every=1)
    launcher = RecordingLauncher()
    _commit(store, job_id, 2, 2.0)
    EvaluationRunner(store, {"local": launcher}, lambda: "http://manager", confirm=lambda: False).reconcile_once(3.0)
    assert launcher.launched == []
    assert [e["state"] for e in job_evaluations(store, job_id)["evaluations"]] == ["pending"]
