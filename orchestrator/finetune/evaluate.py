"""One evaluation of one checkpoint: ``python -m orchestrator.finetune.evaluate``.

The manager starts it beside training (manager/evaluations.py: a niced local process, or a
Kubernetes Job) for a checkpoint step that ``spec.evaluation`` makes due. It exports the
checkpoint once, fine-tunes it on every task with ``finetune()`` inside the task's budget, and
POSTs each task's scores (or why it failed) to the manager as soon as the task ends, with the
evaluation's own token from the environment (never argv). A task that fails is reported and the
next one runs; the pretraining job is never touched.

Exit codes (contract.ExitCode): 0 every task reported; 2 bad arguments; 69 the manager could not
be reached with a report (it then records the missing tasks as failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from orchestrator import contract
from orchestrator.errors import BertctlError
from orchestrator.finetune.run import DEFAULTS, FinetuneConfig, finetune
from orchestrator.finetune.source import local_model_dir
from orchestrator.finetune.tasks import Options
from orchestrator.spec_evaluation import EvaluationTask

log = logging.getLogger("bertctl.finetune.evaluate")
REPORT_TRIES = 6  # with backoff 1, 2, 4, 8, 16 s: a manager restart or a leader takeover fits inside


class BudgetExceeded(Exception):
    """A task ran past budget.max_seconds."""


class ManagerGone(Exception):
    """No manager took a report."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m orchestrator.finetune.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--job-id", required=True)
    p.add_argument("--evaluation-id", type=int, required=True)
    p.add_argument("--checkpoint", required=True, help="The committed checkpoint (step directory URI).")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--tasks-json", required=True, help="spec.evaluation.tasks as JSON, or @FILE holding it.")
    p.add_argument("--manager-url", default=None, help=f"Default: ${contract.ENV_MANAGER_URL}.")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the evaluation's own share).")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N.")
    return p.parse_args(argv)


def read_tasks(raw: str) -> list[EvaluationTask]:
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    return [EvaluationTask.model_validate(t) for t in json.loads(text)]


def read_token(env: dict[str, str] | None = None) -> str:
    """The evaluation token by value or from its 0600 file (the manager's choice per backend)."""
    env = dict(os.environ if env is None else env)
    if env.get(contract.ENV_EVALUATION_TOKEN):
        return env[contract.ENV_EVALUATION_TOKEN]
    path = env.get(contract.ENV_EVALUATION_TOKEN_FILE)
    if path and Path(path).is_file():
        return Path(path).read_text().strip()
    raise SystemExit(f"no evaluation token: set {contract.ENV_EVALUATION_TOKEN} or "
                     f"{contract.ENV_EVALUATION_TOKEN_FILE}")


class Reporter:
    """POSTs one EvaluationReport per task; retries what may pass (no answer, 5xx), never a refusal.
    With several manager replicas (a highly available manager), each retry goes to the next one."""

    def __init__(self, urls: list[str], job_id: str, token: str):
        self.urls = [f"{url}/v1/jobs/{job_id}/evaluations" for url in urls]
        self._headers = {"Authorization": f"Bearer {token}"}

    @property
    def url(self) -> str:
        return self.urls[0]

    def send(self, report: contract.EvaluationReport) -> None:
        body = report.model_dump(mode="json")
        for attempt in range(REPORT_TRIES):
            try:
                resp = httpx.post(self.url, json=body, headers=self._headers, timeout=10.0)
            except httpx.TransportError as exc:
                why = type(exc).__name__
            else:
                if resp.status_code < 300:
                    return
                if resp.status_code < 500:  # refused (ended, unknown, fenced): retrying cannot help
                    raise ManagerGone(f"the manager refused the report of {report.task}: HTTP {resp.status_code} "
                                      f"{resp.text[:300]}")
                why = f"HTTP {resp.status_code}"
            self.urls.append(self.urls.pop(0))  # the next replica, if any, takes the retry
            log.warning("report of %s not delivered (%s); retrying at %s", report.task, why, self.url)
            time.sleep(min(2 ** attempt, 16))
        raise ManagerGone(f"no manager at {', '.join(self.urls)} took the report of {report.task}")


@contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Raise BudgetExceeded in this (main) thread once ``seconds`` have passed."""
    def expire(_signum, _frame):
        raise BudgetExceeded()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def overrides(task: EvaluationTask) -> dict[str, Any]:
    """The task's hyper-parameters for finetune(): the budget's examples become whole batches."""
    batch = task.batch_size or DEFAULTS[task.task].batch_size
    out: dict[str, Any] = {"epochs": task.budget.epochs, "lr": task.lr, "batch_size": task.batch_size,
                           "max_length": task.max_length}
    if task.budget.max_train_examples:
        out["max_steps"] = max(1, math.ceil(task.budget.max_train_examples / batch))
    return out


def run_task(task: EvaluationTask, model_dir: Path, step: int, evaluation_id: int, device: str,
             scratch: Path) -> contract.EvaluationReport:
    started = time.monotonic()
    base = {"evaluation_id": evaluation_id, "step": step, "task": task.name}
    options = Options(task.text_column, task.text_pair_column, task.label_column, task.tag_column, task.doc_stride)
    config = FinetuneConfig(str(model_dir), task.task, task.train, task.validation, scratch / task.name, options,
                            overrides(task), device, progress=False)
    try:
        with budget(task.budget.max_seconds):
            scores = finetune(config)
    except BudgetExceeded:
        return contract.EvaluationReport(**base, status="failed", seconds=time.monotonic() - started, message=(
            f"ran past its budget of {task.budget.max_seconds:g}s; raise budget.max_seconds or lower "
            "budget.max_train_examples / epochs"))
    except Exception as exc:  # noqa: BLE001  one task's failure (bad input, a torch error) must not skip the next
        what = str(exc) if isinstance(exc, (BertctlError, OSError)) else f"{type(exc).__name__}: {exc}"
        return contract.EvaluationReport(**base, status="failed", seconds=time.monotonic() - started,
                                         message=what[:4000])
    return contract.EvaluationReport(**base, status="succeeded", metrics=scores["metrics"],
                                     examples_seen=scores["examples_seen"],
                                     validation_examples=scores["validation_examples"], seconds=scores["seconds"])


def evaluate(args: argparse.Namespace, reporter: Reporter) -> None:
    tasks = read_tasks(args.tasks_json)
    with tempfile.TemporaryDirectory(prefix="bertctl-evaluate-") as tmp:
        scratch = Path(tmp)
        try:
            model_dir = local_model_dir(args.checkpoint, scratch / "export")  # once for every task
        except (BertctlError, OSError) as exc:
            for task in tasks:
                reporter.send(contract.EvaluationReport(
                    evaluation_id=args.evaluation_id, step=args.step, task=task.name, status="failed",
                    message=f"checkpoint {args.checkpoint} cannot be used: {str(exc)[:3500]}"))
            return
        for task in tasks:
            log.info("step %d: fine-tuning %s (%s)", args.step, task.name, task.task)
            report = run_task(task, model_dir, args.step, args.evaluation_id, args.device, scratch / "runs")
            log.info("step %d %s: %s %s", args.step, task.name, report.status, report.metrics or report.message)
            reporter.send(report)


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    urls = contract.manager_urls(f"{args.manager_url or os.environ.get(contract.ENV_MANAGER_URL, '')},"
                                 f"{os.environ.get(contract.ENV_MANAGER_URLS, '')}")
    if not urls:
        print(f"no manager: pass --manager-url or set {contract.ENV_MANAGER_URL}", file=sys.stderr)
        return contract.ExitCode.USER_ERROR
    try:
        reporter = Reporter(urls, args.job_id, read_token())
        read_tasks(args.tasks_json)  # bad arguments fail before the model loads
    except (SystemExit, ValueError, OSError) as exc:
        print(f"bad arguments: {exc}", file=sys.stderr)
        return contract.ExitCode.USER_ERROR
    _limit_threads(args.threads)
    try:
        evaluate(args, reporter)
    except ManagerGone as exc:
        log.error("%s", exc)
        return contract.ExitCode.INFRASTRUCTURE
    return contract.ExitCode.SUCCEEDED


if __name__ == "__main__":
    sys.exit(main())
