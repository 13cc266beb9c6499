"""An HTTP-level fake of the Kubernetes API server on 127.0.0.1, for the KubeRay backend's tests.

It speaks just enough of the REST API for the official client: create / get / list (equality
label selectors) / replace / delete of namespaced and cluster-scoped objects under /api/v1 and
/apis/<group>/<version>. It records every request (method, path, the queries that matter) so a
test can assert the exact sequence. Deleting a RayJob behaves like foreground deletion: the
object is first returned with a deletionTimestamp for ``delete_lag`` reads, then it vanishes
together with the pods of its attempt (the garbage collector's cascade), except pods with
finalizers, which only a delete with gracePeriodSeconds=0 removes.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

RECORDED_QUERIES = ("labelSelector", "propagationPolicy", "gracePeriodSeconds")
ATTEMPT_LABELS = ("bertctl.dev/job-id", "bertctl.dev/attempt")


def _split(path: str) -> tuple[str, str | None]:
    """(collection path, name or None) for /api/v1/... and /apis/g/v/... paths."""
    parts = path.strip("/").split("/")
    prefix = 2 if parts[0] == "api" else 3
    rest = parts[prefix:]
    if rest and rest[0] == "namespaces" and len(rest) >= 3:
        coll, name = parts[: prefix + 3], rest[3] if len(rest) > 3 else None
    else:
        coll, name = parts[: prefix + 1], rest[1] if len(rest) > 1 else None
    return "/" + "/".join(coll), name


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube:
    def __init__(self, delete_lag: int = 1):
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[str] = []
        self.delete_lag = delete_lag
        self._lag: dict[tuple[str, str], int] = {}
        self.fail: dict[str, int] = {}  # "METHOD /path" -> HTTP status to answer instead
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeKube":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- test-side helpers (what the cluster would do on its own) ----------------------------
    def put(self, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            obj.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
            self.objects[(collection, obj["metadata"]["name"])] = obj
            return obj

    def get(self, collection: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((collection, name))

    def remove(self, collection: str, name: str) -> None:
        with self.lock:
            self.objects.pop((collection, name), None)

    def names(self, collection: str) -> list[str]:
        return sorted(n for (c, n) in self.objects if c == collection)

    def take_requests(self) -> list[str]:
        with self.lock:
            out, self.requests = self.requests, []
            return out

    # -- request handling -----------------------------------------------------------------------
    def _record(self, method: str, url: str) -> tuple[str, dict[str, str]]:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        shown = "&".join(f"{k}={query[k]}" for k in RECORDED_QUERIES if k in query)
        with self.lock:
            self.requests.append(f"{method} {parts.path}" + (f"?{shown}" if shown else ""))
        return parts.path, query

    def handle(self, method: str, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
        path, query = self._record(method, url)
        if f"{method} {path}" in self.fail:
            code = self.fail[f"{method} {path}"]
            return _status(code, {403: "Forbidden", 500: "InternalError"}.get(code, "Failure"))
        coll, name = _split(path)
        with self.lock:
            if method == "GET" and name is None:
                items = [o for (c, _), o in sorted(self.objects.items()) if c == coll
                         and _matches(o, query.get("labelSelector"))]
                return 200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
            if method == "GET":
                return self._read(coll, name)
            if method == "POST":
                return self._create(coll, json.loads(body))
            if method == "PUT":
                obj = json.loads(body)
                if (coll, name) not in self.objects:
                    return _status(404, "NotFound")
                self.objects[(coll, name)] = _stored(obj)
                return 200, obj
            if method == "DELETE":
                return self._delete(coll, name)
        return _status(405, "MethodNotAllowed")

    def _read(self, coll: str, name: str) -> tuple[int, dict[str, Any]]:
        key = (coll, name)
        if key not in self.objects:
            return _status(404, "NotFound")
        if key in self._lag:
            if self._lag[key] <= 0:
                self._vanish(key)
                return _status(404, "NotFound")
            self._lag[key] -= 1
        return 200, self.objects[key]

    def _create(self, coll: str, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = (coll, obj["metadata"]["name"])
        if key in self.objects:
            return _status(409, "AlreadyExists")
        self.objects[key] = _stored(obj)
        return 201, self.objects[key]

    def _delete(self, coll: str, name: str) -> tuple[int, dict[str, Any]]:
        key = (coll, name)
        if key not in self.objects:
            return _status(404, "NotFound")
        if coll.endswith("/rayjobs") and self.delete_lag > 0:
            self.objects[key]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            self._lag.setdefault(key, self.delete_lag)
        else:
            self._vanish(key)
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}

    def _vanish(self, key: tuple[str, str]) -> None:
        obj = self.objects.pop(key)
        self._lag.pop(key, None)
        if key[0].endswith("/rayjobs"):  # the garbage collector removes the attempt's pods with it
            labels = obj["metadata"].get("labels") or {}
            ns_pods = f"/api/v1/namespaces/{key[0].split('/')[5]}/pods"
            # A pod with finalizers (say, on an unreachable node) outlives the cascade.
            for k in [k for k, o in self.objects.items() if k[0] == ns_pods and not o["metadata"].get("finalizers")
                      and all((o["metadata"].get("labels") or {}).get(lab) == labels.get(lab) for lab in ATTEMPT_LABELS)]:
                self.objects.pop(k)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                code, payload = fake.handle(method, self.path, self.rfile.read(length) if length else b"")
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._serve("PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                self._serve("DELETE")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server keeps: a uid, and Secret stringData folded into base64 data."""
    obj.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
    if obj.get("kind") == "Secret" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for k, v in obj.pop("stringData").items():
            data[k] = base64.b64encode(v.encode()).decode()
    return obj


def _status(code: int, reason: str) -> tuple[int, dict[str, Any]]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
                  "message": reason}
