"""A small HTTP client of the manager API for the CLI (and `bertctl run`).

Every failure becomes a BertctlError with one line saying what to do: the CLI prints it and
exits 2. The token goes only into the Authorization header.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import httpx

from orchestrator.errors import ManifestError, PermanentError, TemporaryError

ENV_URL = "BERTCTL_URL"
ENV_TOKEN = "BERTCTL_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8470"


class ClientError(PermanentError):
    """The manager answered and refused: retrying the same request cannot help."""


class ManagerUnreachable(TemporaryError):
    """No answer from the manager (not started yet, restarting, a network hiccup): try again later."""


class ManagerClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 10.0):
        self.url = (url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get(ENV_TOKEN)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ManagerUnreachable(f"cannot reach the manager at {self.url} ({type(exc).__name__}); start it "
                                     f"with `bertctl server` or pass --url / set {ENV_URL}", delay_s=5.0) from None
        self._check(resp)
        return resp

    def _check(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        detail = _detail(resp)
        if resp.status_code == 401:
            raise ClientError(f"the manager refused the token ({detail}); pass --token or set {ENV_TOKEN}")
        if resp.status_code == 403:
            raise ClientError(f"this token may not do that: {detail}")
        if resp.status_code == 422 and isinstance(detail, dict) and "problems" in detail:
            raise ManifestError([(p["path"], p["message"]) for p in detail["problems"]])
        raise ClientError(f"manager answered HTTP {resp.status_code}: {detail}")

    def submit(self, text: str, submission_id: str | None = None) -> dict[str, Any]:
        params = {"submission_id": submission_id} if submission_id else {}
        return self._request("POST", "/v1/jobs", content=text.encode(), params=params,
                             headers={"Content-Type": "application/yaml"}).json()

    def list(self, phase: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("phase", phase), ("name", name)) if v}
        return self._request("GET", "/v1/jobs", params=params).json()["jobs"]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/jobs/{job_id}/events", params={"after": after}).json()["events"]

    def metrics(self, job_id: str, since_step: int = 0) -> list[dict[str, Any]]:
        """The job's metric history (downsampled by the manager), with the data ledger's values."""
        return self._request("GET", f"/v1/jobs/{job_id}/metrics", params={"since_step": since_step}).json()["points"]

    def evaluations(self, job_id: str) -> dict[str, Any]:
        """The job's checkpoint evaluations (spec.evaluation) and the newest score per task."""
        return self._request("GET", f"/v1/jobs/{job_id}/evaluations").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def logs(self, job_id: str, follow: bool = False, attempt: int | None = None) -> Iterator[bytes]:
        params: dict[str, Any] = {"follow": str(follow).lower()}
        if attempt:
            params["attempt"] = attempt
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/logs", params=params, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                yield from resp.iter_bytes()
        except httpx.TransportError as exc:
            raise ManagerUnreachable(f"lost the manager at {self.url} ({type(exc).__name__}); "
                                     "run the command again once it answers", delay_s=5.0) from None


def _detail(resp: httpx.Response) -> Any:
    try:
        return resp.json().get("detail", resp.text)
    except ValueError:
        return resp.text[:200]

