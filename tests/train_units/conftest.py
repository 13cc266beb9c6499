"""A real S3 endpoint for the uploader tests: moto's server on a loopback port, reached through a
fault-injecting TCP proxy, used with real boto3 (nothing is patched in-process)."""

from __future__ import annotations

import hashlib
import socket
import threading
from urllib.parse import urlparse

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.train_units.procs import free_port


class FaultProxy:
    """Forwards TCP to ``target``; ``drop`` (a predicate on the request line) closes matching
    connections before anything reaches S3; ``stall`` holds every new request until released."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.drop = lambda request_line: False
        self.stall = threading.Event()
        self.stall.set()  # set = flowing
        self.dropped: list[str] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            first = client.recv(65536)
            line = first.split(b"\r\n", 1)[0].decode(errors="replace")
            if self.drop(line):
                self.dropped.append(line)
                client.close()
                return
            self.stall.wait(60)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            upstream.sendall(first)
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            self._pipe(client, upstream)
        except OSError:
            client.close()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._closed = True
        self.stall.set()
        self._sock.close()


class Boto3Storage:
    """The Storage protocol over boto3 (enough of it for checkpoints), for an explicit endpoint."""

    def __init__(self, endpoint: str):
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing",
                                   config=Config(retries={"max_attempts": 2, "mode": "standard"},
                                                 connect_timeout=2, read_timeout=10))

    @staticmethod
    def _bk(uri):
        u = urlparse(uri)
        return u.netloc, u.path.lstrip("/")

    def exists(self, uri):
        try:
            self.client.head_object(Bucket=self._bk(uri)[0], Key=self._bk(uri)[1])
            return True
        except ClientError:
            return False

    def read_bytes(self, uri):
        b, k = self._bk(uri)
        return self.client.get_object(Bucket=b, Key=k)["Body"].read()

    def write_bytes(self, uri, data):
        b, k = self._bk(uri)
        self.client.put_object(Bucket=b, Key=k, Body=data)

    def put_if_absent(self, uri, data):
        b, k = self._bk(uri)
        try:
            self.client.put_object(Bucket=b, Key=k, Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                return False
            raise

    def list_files(self, prefix):
        b, k = self._bk(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=k)
        return sorted(f"s3://{b}/{o['Key']}" for p in pages for o in p.get("Contents", []))

    def upload_file(self, local_file, uri):
        b, k = self._bk(uri)
        self.client.upload_file(local_file, b, k)

    def sha256(self, uri):
        return hashlib.sha256(self.read_bytes(uri)).hexdigest()


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, request):
    """(proxy, storage through the proxy, direct storage, bucket) with a fresh bucket per test."""
    proxy = FaultProxy(urlparse(moto_endpoint).port)
    direct = Boto3Storage(moto_endpoint)
    bucket = f"ckpt-{abs(hash(request.node.name)) % 10**8}"
    direct.client.create_bucket(Bucket=bucket)
    yield proxy, Boto3Storage(f"http://127.0.0.1:{proxy.port}"), direct, bucket
    proxy.close()
