"""The evaluation process's reports reach a highly available manager: a replica that does not
answer hands the report to the next one (``BERTCTL_MANAGER_URLS``), as trainers' heartbeats do;
a refusal is final."""

from __future__ import annotations

import pytest

from orchestrator import contract
from orchestrator.finetune.evaluate import ManagerGone, Reporter
from tests.manager.procs import free_port
from tests.recording_server import RecordingServer


def _report() -> contract.EvaluationReport:
    return contract.EvaluationReport(evaluation_id=3, step=40, task="ner", status="succeeded",
                                     metrics={"f1": 0.5}, examples_seen=64, validation_examples=10, seconds=1.0)


def test_a_replica_that_does_not_answer_passes_the_report_to_the_next():
    live = RecordingServer(status=201)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        urls = contract.manager_urls(f"{dead}/, {live.url},{dead}")
        assert urls == [dead, live.url]
        Reporter(urls, "job-a", "tok").send(_report())
    finally:
        live.close()
    [(path, body, auth)] = live.requests
    assert path == "/v1/jobs/job-a/evaluations" and auth == "Bearer tok"
    assert (body["task"], body["step"], body["metrics"]) == ("ner", 40, {"f1": 0.5})


def test_a_refusal_is_not_retried_elsewhere():
    refusing, other = RecordingServer(status=409), RecordingServer(status=201)
    try:
        with pytest.raises(ManagerGone, match="refused the report of ner: HTTP 409"):
            Reporter([refusing.url, other.url], "job-a", "tok").send(_report())
    finally:
        refusing.close()
        other.close()
    assert len(refusing.requests) == 1 and other.requests == []
