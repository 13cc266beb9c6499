"""The embedded manager (for `bertctl run`): a free loopback port, temp SQLite, local backend."""

import time

import httpx
import yaml

from orchestrator.manager.embedded import EmbeddedManager
from orchestrator.manager.store import Store

from tests.manager.conftest import FAKE_TRAINER, make_manifest


def test_embedded_runs_a_job_and_cancels_leftovers_on_exit(tmp_path):
    data = tmp_path / "embedded"
    with EmbeddedManager(data_dir=data, trainer_command=FAKE_TRAINER, interval_s=0.1, cancel_grace_s=5.0) as em:
        c = httpx.Client(base_url=em.url, headers={"Authorization": f"Bearer {em.token}"}, timeout=10)
        assert c.get("/healthz").json()["database"] == "sqlite"
        done = c.post("/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path, max_steps=5))).json()["id"]
        longer = c.post("/v1/jobs", content=yaml.safe_dump(make_manifest(tmp_path, name="long",
                                                                         max_steps=100_000))).json()["id"]
        deadline = time.monotonic() + 30
        while c.get(f"/v1/jobs/{done}").json()["phase"] != "SUCCEEDED":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    store = Store(f"sqlite:///{data / 'manager.db'}")
    assert store.get_job(done)["phase"] == "SUCCEEDED"
    assert store.get_job(longer)["phase"] == "CANCELLED", "stopping the embedded manager leaves nothing running"
    store.close()


def test_bertctl_trainer_command_replaces_the_default_trainer_command_whole(tmp_path, monkeypatch):
    default = ["python", "-m", "orchestrator.train", "--no-prepare"]
    monkeypatch.delenv("BERTCTL_TRAINER_COMMAND", raising=False)
    assert EmbeddedManager(data_dir=tmp_path, default_trainer_command=default).cfg.trainer_command == default
    monkeypatch.setenv("BERTCTL_TRAINER_COMMAND", "wrap --flag 'a b'")
    assert EmbeddedManager(data_dir=tmp_path, default_trainer_command=default).cfg.trainer_command == [
        "wrap", "--flag", "a b"]
    given = EmbeddedManager(data_dir=tmp_path, trainer_command=FAKE_TRAINER, default_trainer_command=default)
    assert given.cfg.trainer_command == FAKE_TRAINER, "a command given outright is used as it is"
