"""The evaluation process's reports reach a highly available manager: a replica that does not
answer hands the report to the next one (``BERTCTL_MANAGER_URLS``), as trainers' heartbeats do;
a refusal is final."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator import contract
from orchestrator.finetune.evaluate import ManagerGone, Reporter
from tests.manager.procs import free_port


class _Replica:
    """A real HTTP server on loopback that records report bodies and answers ``status``."""

    def __init__(self, status: int):
        self.reports: list[tuple[str, dict, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.reports.append((self.path, body, self.headers.get("Authorization", "")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _report() -> contract.EvaluationReport:
    return contract.EvaluationReport(evaluation_id=3, step=40, task="ner", status="succeeded",
                                     metrics={"f1": 0.5}, examples_seen=64, validation_examples=10, seconds=1.0)


def test_a_replica_that_does_not_answer_passes_the_report_to_the_next():
    live = _Replica(status=201)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        urls = contract.manager_urls(f"{dead}/, {live.url},{dead}")
        assert urls == [dead, live.url]
        Reporter(urls, "job-a", "tok").send(_report())
    finally:
        live.close()
    [(path, body, auth)] = live.reports
    assert path == "/v1/jobs/job-a/evaluations" and auth == "Bearer tok"
    assert (body["task"], body["step"], body["metrics"]) == ("ner", 40, {"f1": 0.5})


def test_a_refusal_is_not_retried_elsewhere():
    refusing, other = _Replica(status=409), _Replica(status=201)
    try:
        with pytest.raises(ManagerGone, match="refused the report of ner: HTTP 409"):
            Reporter([refusing.url, other.url], "job-a", "tok").send(_report())
    finally:
        refusing.close()
        other.close()
    assert len(refusing.reports) == 1 and other.reports == []
