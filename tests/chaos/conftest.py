"""Chaos fixtures: the trainer tests' corpus and manifest, one Ray cluster whose workers talk
S3 through a fault proxy, and helpers to run attempts and kill things.

The Ray workers inherit the environment of the moment the cluster starts, so the S3 endpoint
(a FaultProxy in front of moto on loopback) is set for the whole session before ``ray.init``;
tests switch faults on and off on the proxy object.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.manager.backends.processes import command_line

from tests.support.s3server import FaultProxy, make_bucket, s3_server  # noqa: F401 - fixture
from tests.train.conftest import manifest, read_metrics, shards, train  # noqa: F401 - fixtures / helpers

ROOT = Path(__file__).resolve().parents[2]


class TriggerProxy(FaultProxy):
    """FaultProxy that turns ``blackhole`` on at the first write whose path contains ``trigger``.

    With ``armed_by`` set, the trigger counts only once a write whose path contains it has been
    answered: ranks upload independently, so a rank's first write of step K can come before the
    commit of the step before it, and a blackhole then would stop that commit too.
    """

    def __init__(self, upstream_port: int):
        self.trigger: str | None = None
        self.armed_by: str | None = None
        self.armed = False
        self.triggered_path: str | None = None
        super().__init__(upstream_port)

    def _handler(self):
        base, proxy = super()._handler(), self

        class Handler(base):
            def _handle(self) -> None:
                write = self.command in ("PUT", "POST")
                armed = proxy.armed or not proxy.armed_by
                if write and armed and proxy.trigger and proxy.trigger in self.path and not proxy.blackhole:
                    proxy.blackhole, proxy.triggered_path = True, self.path
                super()._handle()
                if write and proxy.armed_by and proxy.armed_by in self.path and not proxy.blackhole:
                    proxy.armed = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

    def reset(self) -> None:
        self.trigger, self.armed_by, self.armed = None, None, False
        self.blackhole, self.triggered_path = False, None


@pytest.fixture(scope="package")  # torn down before the next test package starts its own Ray
def s3_proxy(s3_server):  # noqa: F811
    """The proxy plus the S3 environment for this process and every Ray worker started later."""
    proxy = TriggerProxy(int(s3_server.rsplit(":", 1)[1]))
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT_URL_S3": proxy.url,
           "AWS_EC2_METADATA_DISABLED": "true", "BERTCTL_S3_RETRY_BUDGET_S": "4"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield proxy
    proxy.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_proxy, s3_server) -> str:  # noqa: F811
    s3_proxy.reset()
    return make_bucket(s3_server)


@pytest.fixture(scope="package")  # torn down before the next test package starts its own Ray
def ray_cluster(s3_proxy):
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def job(path: Path, shards: Path, ckpt: str, *, async_upload: bool = False, deadline: float | None = None,
        training: dict | None = None, **kw) -> Path:  # noqa: F811
    """tests/train's tiny manifest (2 layers, hidden 64, seq_len 64) with checkpoint options."""
    manifest(path, shards, Path("/unused"), **kw)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["checkpoint"].update({"uri": ckpt, "async_upload": async_upload})
    doc["spec"]["training"].update(training or {})
    if deadline is not None:
        doc["spec"]["checkpoint"]["preemption_deadline_s"] = deadline
    path.write_text(yaml.safe_dump(doc))
    return path


def attempt(manifest_path: Path, work: Path, n: int, monkeypatch) -> tuple[int, list[dict]]:
    """Attempt ``n`` through the real entry point on the session cluster."""
    monkeypatch.setenv("BERTCTL_ATTEMPT", str(n))
    return train(manifest_path, work / f"attempt-{n}")


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (by parent pid), so a test only ever kills its own processes."""
    try:
        return [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return []


def cmdline(pid: int) -> str:
    return command_line(pid)


def train_workers(root: int | None = None) -> list[int]:
    """Ray Train worker processes below ``root`` (default: this process)."""
    return sorted(p for p in descendants(root or os.getpid()) if "RayTrainWorker" in cmdline(p))
