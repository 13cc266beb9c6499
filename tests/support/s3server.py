"""S3 test fixtures: moto's S3 server on a loopback port, and a fault-injecting proxy in front.

Use from any test module with ``pytest_plugins = ["tests.support.s3server"]`` (in a conftest) or
by importing the fixtures. Fixtures:

- ``s3_server`` (session): endpoint URL of a real moto HTTP server on 127.0.0.1.
- ``s3_env`` (function): points AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 at the server, sets dummy
  credentials (testing/testing) and region, creates a fresh bucket; yields the bucket name.
- ``s3_fault_proxy`` (function): a FaultProxy in front of the server, with the same environment
  as ``s3_env`` but AWS_ENDPOINT_URL pointing at the proxy; yields (proxy, bucket).

FaultProxy knobs (change them at any time, thread-safe enough for tests):
  ``slowdown_rate`` share of requests answered 503 SlowDown; ``drop_rate`` share whose connection
  is reset (before the request is forwarded, or after it with the response cut off);
  ``blackhole`` True: every request is dropped until set back to False (kill an upload);
  ``seed`` makes the fault pattern reproducible; ``stats`` counts forwarded/slowdown/dropped.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import struct
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length"}


def start_moto_process(port: int, tries: int = 300) -> "subprocess.Popen":
    """moto's S3 server in its own process (benchmarks: it must not share the caller's GIL)."""
    import subprocess
    import sys
    import time
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(tries):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultProxy:
    """An HTTP/1.1 reverse proxy on 127.0.0.1 that injects S3-style faults."""

    def __init__(self, upstream_port: int, slowdown_rate: float = 0.0, drop_rate: float = 0.0, seed: int = 0):
        self.upstream_port = upstream_port
        self.slowdown_rate, self.drop_rate, self.blackhole = slowdown_rate, drop_rate, False
        self.stats = {"forwarded": 0, "slowdown": 0, "dropped": 0}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def decide(self) -> str:
        with self._lock:
            if self.blackhole:
                fate = "drop"
            else:
                x = self._rng.random()
                fate = "slowdown" if x < self.slowdown_rate else (
                    "drop" if x < self.slowdown_rate + self.drop_rate else "forward")
            self.stats[{"drop": "dropped", "forward": "forwarded"}.get(fate, fate)] += 1
            return fate

    def coin(self) -> bool:
        with self._lock:
            return self._rng.random() < 0.5

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    return self._chunked()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _chunked(self) -> bytes:
                out = b""
                while True:
                    line = self.rfile.readline()
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers (checksums) are dropped; moto does not need them
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends a TCP RST, i.e. "connection reset by peer"
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _handle(self) -> None:
                body = self._body()
                fate = proxy.decide()
                if fate == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN_BODY if self.command != "HEAD" else b"")
                    return
                if fate == "drop" and proxy.coin():
                    return self._reset()  # before forwarding: the request never happened
                status, reason, headers, data = self._forward(body)
                if fate == "drop" and self.command != "HEAD":  # the request happened, the reply is cut off
                    self.send_response(status, reason)
                    self.send_header("Content-Length", str(max(len(data), 1)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    return self._reset()
                self.send_response(status, reason)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                upstream_length = dict((k.lower(), v) for k, v in headers).get("content-length")
                length = upstream_length if self.command == "HEAD" and upstream_length else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                        headers.pop("x-amz-trailer", None)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp.status, resp.reason, resp.getheaders(), data

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


@pytest.fixture(scope="session")
def s3_server():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _set_env(monkeypatch, endpoint: str) -> None:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> str:
    _set_env(monkeypatch, s3_server)
    return make_bucket(s3_server)


@pytest.fixture
def s3_fault_proxy(s3_server, monkeypatch):
    bucket = make_bucket(s3_server)
    proxy = FaultProxy(int(s3_server.rsplit(":", 1)[1]), seed=int(os.environ.get("BERTCTL_FAULT_SEED", "0")))
    _set_env(monkeypatch, proxy.url)
    monkeypatch.setenv("BERTCTL_S3_RETRY_BUDGET_S", "60")
    yield proxy, bucket
    proxy.close()
