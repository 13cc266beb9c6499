"""Fakes for the Checkpointer's unit tier: a DeepSpeed-shaped engine and a local storage that
records, fails or holds writes on demand. No torch.distributed, no DeepSpeed, no Ray.

``FakeEngine`` has what ``Checkpointer`` calls on a DeepSpeed engine: ``save_checkpoint(save_dir,
tag=..., save_latest=...)`` writing the files DeepSpeed ZeRO 1/2 writes (the replicated model file on
rank 0, one optimizer shard per rank) as real ``torch.save`` files with small payloads (so they pass
the loader's data-only check, train/checkpoint/safe_load.py), ``load_checkpoint(load_dir, tag=...)``
returning ``(load_path, client_state)`` or ``(None, None)`` when there is nothing to load (DeepSpeed's
contract), and a ``checkpoint_engine`` whose ``drain`` writes deferred files (what
train/checkpoint/snapshot.py's background writer does for async saves).

``FakeStorage`` is the real ``LocalStorage`` (so the files land on tmp_path and verify for real)
with three knobs: ``ops`` records every write in order, ``fail(op, needle, exc)`` makes a write whose
URI contains ``needle`` raise, and ``hold_uploads`` blocks ``upload_file`` until ``release`` (an
object store that is slow, with no clock involved).

``RelayGroup`` stands in for torch.distributed when several ranks of one worker group are driven one
after another in one thread (async saves: their background work uses no collective).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from orchestrator.errors import StorageError
from orchestrator.storage import LocalStorage

MODEL_FILE = "mp_rank_00_model_states.pt"


def optim_file(rank: int) -> str:
    return f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


def write_pt(path: Path, payload: bytes) -> None:
    """A torch.save file holding ``payload`` (as text: plain values only, like a real state dict)."""
    torch.save({"payload": payload.decode("latin-1")}, path)


def read_pt(path: Path) -> bytes:
    return torch.load(path, weights_only=True)["payload"].encode("latin-1")


class FakeCheckpointEngine:
    """DeepSpeed's ``engine.checkpoint_engine`` slot; ``drain`` flushes the deferred writes."""

    def __init__(self):
        self.pending: list[tuple[Path, bytes]] = []
        self.drains = 0

    def drain(self, timeout_s: float | None = None) -> None:
        self.drains += 1
        pending, self.pending = self.pending, []
        for path, data in pending:
            write_pt(path, data)


class FakeEngine:
    """The slice of a DeepSpeed engine the Checkpointer uses, writing and reading real small files."""

    def __init__(self, rank: int = 0, weights: bytes = b"w0", deferred: bool = False):
        self.rank = rank
        self.weights = weights  # what the model file holds; a test changes it between saves
        self.deferred = deferred  # async: files appear only when checkpoint_engine.drain() runs
        self.checkpoint_engine = FakeCheckpointEngine()
        self.saves: list[dict] = []
        self.loads: list[dict] = []
        self.loaded: dict[str, bytes] = {}  # file name -> payload of each file of the last successful load

    def save_checkpoint(self, save_dir, tag=None, client_state=None, save_latest=True, **kw):
        self.saves.append({"save_dir": str(save_dir), "tag": tag, "save_latest": save_latest, **kw})
        tag_dir = Path(save_dir) / tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        files = {optim_file(self.rank): b"optim " + self.weights + f" rank {self.rank}".encode() * 40}
        if self.rank == 0:
            files[MODEL_FILE] = b"model " + self.weights * 100
        for name, data in files.items():
            if self.deferred:
                self.checkpoint_engine.pending.append((tag_dir / name, data))
            else:
                write_pt(tag_dir / name, data)
        return True

    def load_checkpoint(self, load_dir, tag=None, **kw):
        self.loads.append({"load_dir": str(load_dir), "tag": tag, **kw})
        tag_dir = Path(load_dir) / tag
        if not tag_dir.is_dir():
            return None, None
        self.loaded = {p.name: read_pt(p) for p in tag_dir.glob("*.pt")}
        return str(tag_dir), {}


class FakeStorage(LocalStorage):
    """LocalStorage that records writes, injects failures and can hold uploads."""

    def __init__(self):
        self.ops: list[tuple[str, str]] = []
        self._faults: list[tuple[str, str, Exception]] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.held = threading.Event()  # set once an upload is waiting on hold_uploads

    # --- knobs
    def fail(self, op: str, needle: str, exc: Exception | None = None) -> None:
        """``op`` (upload_file, write_bytes, put_if_absent, delete_prefix) on a URI containing
        ``needle`` raises ``exc`` (a StorageError by default) from now on."""
        self._faults.append((op, needle, exc or StorageError(f"injected {op} failure on *{needle}*")))

    def hold_uploads(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    # --- the Storage protocol, instrumented
    def _enter(self, op: str, uri: str) -> None:
        for f_op, needle, exc in self._faults:
            if f_op == op and needle in uri:
                raise exc
        with self._lock:
            self.ops.append((op, uri))

    def write_bytes(self, uri, data):
        self._enter("write_bytes", uri)
        super().write_bytes(uri, data)

    def put_if_absent(self, uri, data):
        self._enter("put_if_absent", uri)
        return super().put_if_absent(uri, data)

    def delete_prefix(self, prefix):
        self._enter("delete_prefix", prefix)
        super().delete_prefix(prefix)

    def upload_file(self, local_file, uri):
        self._enter("upload_file", uri)
        if not self._flowing.is_set():
            self.held.set()
            if not self._flowing.wait(120):  # a safety bound so a broken test ends; never expected
                raise StorageError(f"{uri}: upload held for 120 s (the test never released it)")
        super().upload_file(local_file, uri)


class RelayGroup:
    """The Checkpointer's collectives for ranks of one group called one after another (rank 0 first):
    rank 0's broadcast is kept and handed to every later rank; ``gather`` yields the caller's own
    object only (what each rank learns about the others is not modelled)."""

    def __init__(self):
        self.sent: list = []  # every value rank 0 broadcast, in order

    def member(self, rank: int) -> "_RelayMember":
        return _RelayMember(self, rank)


class _RelayMember:
    def __init__(self, group: RelayGroup, rank: int):
        self.group, self.rank = group, rank

    def broadcast(self, obj, src: int = 0):
        if self.rank == src:
            self.group.sent.append(obj)
            return obj
        if not self.group.sent:
            raise RuntimeError("RelayGroup: the source rank must call first (drive rank 0 before the others)")
        return self.group.sent[-1]

    def gather(self, obj) -> list:
        return [obj]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative posix path -> bytes): to prove nothing changed."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
