"""The local evaluation launcher as the process sees it: niced, its own session, capped threads, no
CUDA device, its token only in a 0600 file named by the environment (never argv), none of the
manager's secrets; its exit code recorded; terminate stops the whole group and removes the token."""

from __future__ import annotations

import json
import os
import sys
import time

from orchestrator.manager.backends.evaluation_local import EvaluationRequest, LocalEvaluationLauncher

TOKEN = "evaluation-secret-" + "t" * 30
PROBE = """
import json, os, stat, sys
path = os.environ["BERTCTL_EVALUATION_TOKEN_FILE"]
print(json.dumps({"nice": os.nice(0), "threads": os.environ.get("OMP_NUM_THREADS"),
                  "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "admin": "BERTCTL_ADMIN_TOKEN" in os.environ, "url": os.environ.get("BERTCTL_MANAGER_URL"),
                  "token": open(path).read(), "mode": oct(stat.S_IMODE(os.stat(path).st_mode)), "argv": sys.argv[1:]}))
"""


def _request(step: int) -> EvaluationRequest:
    evaluation = {"resources": {"cpus": 3}, "tasks": [{"name": "ner", "task": "token-classification",
                                                        "train": "t.conll", "validation": "v.conll"}]}
    return EvaluationRequest(job_id="job-1", evaluation_id=5, step=step, checkpoint_uri="/ckpt/step-00000004",
                             evaluation=evaluation, manifest={"spec": {"evaluation": evaluation}},
                             manager_url="http://127.0.0.1:1", token=TOKEN)


def _wait(launcher, step, handle):
    deadline = time.monotonic() + 30
    while (status := launcher.poll("job-1", step, handle)).running:
        assert time.monotonic() < deadline, "the probe did not end"
        time.sleep(0.05)
    return status


def test_the_process_is_niced_capped_and_gets_its_token_by_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTCTL_ADMIN_TOKEN", "admin-" + "a" * 40)
    launcher = LocalEvaluationLauncher(tmp_path, command=[sys.executable, "-c", PROBE])
    handle = launcher.launch(_request(4))
    assert _wait(launcher, 4, handle).exit_code == 0
    seen = json.loads(open(launcher.log_path("job-1", 4)).read().strip().splitlines()[-1])
    assert seen["nice"] == min(19, os.nice(0) + 19)
    assert seen["threads"] == "3" and seen["cuda"] == "" and seen["admin"] is False
    assert seen["url"] == "http://127.0.0.1:1" and seen["token"] == TOKEN and seen["mode"] == "0o600"
    assert TOKEN not in " ".join(seen["argv"]) and seen["argv"][seen["argv"].index("--step") + 1] == "4"
    assert seen["argv"][seen["argv"].index("--device") + 1] == "cpu"
    launcher.cleanup("job-1", 4, handle)
    assert not (launcher.eval_dir("job-1", 4) / "token").exists()


def test_terminate_stops_the_group_and_a_restarted_manager_reads_the_exit_code(tmp_path):
    sleeper = "import time; print('started', flush=True); time.sleep(60)"
    launcher = LocalEvaluationLauncher(tmp_path, command=[sys.executable, "-c", sleeper])
    handle = launcher.launch(_request(6))
    deadline = time.monotonic() + 30
    while "started" not in open(launcher.log_path("job-1", 6)).read():  # past the wrapper's start
        assert launcher.poll("job-1", 6, handle).running and time.monotonic() < deadline
        time.sleep(0.05)
    assert os.getsid(int(handle)) == int(handle)  # a session of its own: terminate reaches all of it
    launcher.terminate("job-1", 6, handle, grace_s=2.0)
    status = LocalEvaluationLauncher(tmp_path).poll("job-1", 6, handle)  # another manager: only the files
    assert not status.running and status.exit_code not in (None, 0)
    assert not (launcher.eval_dir("job-1", 6) / "token").exists()
