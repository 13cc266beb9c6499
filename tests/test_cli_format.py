"""What `bertctl status`, `status -f` and `run` print: numbers people read, and plain progress lines
when stdout is not a terminal (CI, nohup, a pod log), where a progress bar would show only at the end.

The runs are real `bertctl` subprocesses (stdout a pipe) against a real manager with the manager
tests' contract-speaking fake trainer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import yaml

from orchestrator.cli.follow import fmt_count, fmt_loss, fmt_seconds, fmt_share, progress_line
from tests.manager.conftest import make_manifest
from tests.manager.test_cli import ADMIN, bertctl, server  # noqa: F401 - the real manager fixture
from tests.test_cli_run import _env, _manifest, shards  # noqa: F401 - fixture

PROGRESS = re.compile(r"^(\S+) (\w+)(?: \(.*\))? step (\d+)/(\d+) \((\d+)%\)", re.M)


def test_numbers_are_formatted_for_people():
    assert fmt_loss(6.927000045776367) == "6.93"
    assert fmt_count(13907.697379423496) == "13.9k"
    assert [fmt_count(x) for x in (950, 999.96, 1_234_567, 999_960, 5e9)] == ["950", "1.0k", "1.2M", "1.0M", "5.0G"]
    assert fmt_share(0.81234) == "81.2%" and fmt_seconds(12.345) == "12.3s" and fmt_seconds(245) == "0:04:05"
    assert [f(None) for f in (fmt_loss, fmt_count, fmt_share, fmt_seconds)] == ["-"] * 4
    view = {"phase": "RUNNING", "step": 40, "max_steps": 100, "current_attempt": 2, "startup_phase": None,
            "metrics": {"loss": 6.927000045776367, "mlm_accuracy": 0.0521, "tokens_per_s": 13907.697379423496}}
    assert progress_line("job-1", view, eta_s=65.2) == ("job-1 RUNNING step 40/100 (40%)  loss 6.93  mlm-acc 0.052  "
                                                        "13.9k tokens/s  attempt 2  ETA 0:01:05")


def test_the_eta_counts_from_the_first_step_not_from_start_up():
    from orchestrator.cli.follow import _Rate

    rate = _Rate()
    for now, step in [(0.0, 0), (100.0, 0), (101.0, 2), (103.0, 6)]:  # 100 s of start-up, then 2 steps/s
        rate.observe(now, step)
    assert rate.eta_s({"step": 6, "max_steps": 106}) == 50.0


def _progress(stdout: str) -> list[tuple[str, int]]:
    return [(m.group(2), int(m.group(3))) for m in PROGRESS.finditer(stdout)]


def test_status_follow_prints_plain_lines_and_status_formats_numbers(server, tmp_path):  # noqa: F811
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(make_manifest(tmp_path, name="plain", max_steps=40, labels={"fake-step-s": "0.1"})))
    job_id = bertctl("submit", str(path), url=server.url).stdout.split()[-1]
    status = _status_while_running(job_id, server.url)
    assert re.search(r"^step +\d+/40  loss \d+\.\d\d  1\.0k tokens/s$", status, re.M), status  # 1000.0 from the fake
    env_every = {"BERTCTL_PROGRESS_EVERY_S": "0.5"}
    follow = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", job_id, "-f", "--url", server.url],
                            env={**_admin_env(), **env_every}, capture_output=True, text=True, timeout=60)
    assert follow.returncode == 0, follow.stderr
    assert "\x1b[" not in follow.stdout and "\r" not in follow.stdout  # no cursor movement, no colour codes
    lines = _progress(follow.stdout)
    running = [step for phase, step in lines if phase == "RUNNING"]
    assert len(running) >= 3 and running == sorted(running), follow.stdout  # every 0.5 s through a 4 s run
    assert lines[-1] == ("SUCCEEDED", 40)
    status = bertctl("status", job_id, url=server.url).stdout
    assert re.search(r"productive \d+\.\d%  steps lost 0  recovery \d+\.\ds  checkpointing \d+\.\ds", status), status


def _status_while_running(job_id: str, url: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = bertctl("status", job_id, url=url).stdout
        if "(RUNNING)" in out and "loss -" not in out:
            return out
        time.sleep(0.2)
    raise AssertionError(f"{job_id} never showed a running step with metrics")


def _admin_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("BERTCTL_")}, "BERTCTL_TOKEN": ADMIN}


def test_run_without_a_terminal_prints_progress_lines(tmp_path, shards):  # noqa: F811
    manifest = _manifest(tmp_path, shards, steps=30, labels={"fake-step-s": "0.1"})
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(manifest), "--no-export",
                          "--data-dir", str(tmp_path / "bertctl")], env={**_env(), "BERTCTL_PROGRESS_EVERY_S": "0.5"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = _progress(out.stdout)
    steps = [step for phase, step in lines if phase == "RUNNING"]
    assert len(steps) >= 3 and steps == sorted(steps) and lines[-1] == ("SUCCEEDED", 30), out.stdout
