"""The shard index (``index.json``): what prepare committed and what the stream trusts.

``index.json`` is written last by prepare, so its presence is the commit of a shard set: every
shard it names is complete, and its sha256 lets a reader detect a corrupt or swapped shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from orchestrator.errors import DataError, StorageError
from orchestrator.storage import join, storage_for

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def id_dtype(vocab_size: int) -> pa.DataType:
    """Token ids are stored as uint16 when the vocabulary allows it: half the bytes to read."""
    return pa.uint16() if vocab_size <= 2**16 else pa.int32()


def shard_schema(seq_len: int, vocab_size: int) -> pa.Schema:
    """Columns of every shard. ``a_end`` = index just past the first [SEP] (segment A + [CLS]);
    token types and the attention mask are derived from it and ``length`` at read time."""
    return pa.schema([
        pa.field("input_ids", pa.list_(id_dtype(vocab_size), seq_len), nullable=False),
        pa.field("length", pa.int16(), nullable=False),
        pa.field("a_end", pa.int16(), nullable=False),
        pa.field("next_sentence_label", pa.int8(), nullable=False),
    ])


@dataclass(frozen=True)
class ShardInfo:
    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class ShardIndex:
    """The parsed ``index.json`` of a prepared shard directory."""

    uri: str
    shards: list[ShardInfo]
    seq_len: int
    nsp: bool
    vocab_size: int
    lowercase: bool
    special_tokens: dict[str, int]
    tokenizer_files: dict[str, str]     # role -> path relative to the shard dir
    tokenizer_sha256: str
    tokens: int = 0                     # non-special tokens of the corpus (statistics only)
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def schema(self) -> pa.Schema:
        return shard_schema(self.seq_len, self.vocab_size)

    def shard_uri(self, name: str) -> str:
        return join(self.uri, name)

    def tokenizer_uri(self, role: str = "vocab") -> str:
        return join(self.uri, self.tokenizer_files[role])

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("uri")
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, uri: str, text: str) -> "ShardIndex":
        d = json.loads(text)
        if d.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{join(uri, INDEX_NAME)}: format_version {d.get('format_version')} is not "
                            f"{FORMAT_VERSION}; re-run `bertctl prepare` with this version of bertctl")
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        return cls(uri=uri, **d)

    @classmethod
    def load(cls, shards_uri: str) -> "ShardIndex":
        """Read and check ``index.json``; a missing or invalid index is a DataError saying what to do."""
        uri = join(shards_uri, INDEX_NAME)
        store = storage_for(shards_uri)
        try:
            if not store.exists(uri):
                raise DataError(f"{uri}: no index.json, so {shards_uri} holds no prepared shards; run "
                                f"`bertctl prepare --output {shards_uri} ...` (or set spec.data.prepare)")
            text = store.read_bytes(uri).decode()
        except StorageError as exc:
            raise DataError(f"{uri}: cannot read the shard index ({exc})") from None
        try:
            index = cls.from_json(shards_uri.rstrip("/"), text)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{uri}: invalid index.json ({exc}); delete {shards_uri} and re-run "
                            "`bertctl prepare`") from None
        if not index.shards:
            raise DataError(f"{uri}: the index lists no shards; the corpus was empty - check the inputs")
        return index

    def verify_shard(self, name: str) -> None:
        """Re-read one shard and check its sha256, schema and row count against the index."""
        info = self.info(name)
        data = storage_for(self.uri).read_bytes(self.shard_uri(name))
        check_shard_bytes(self, info, data, hashlib.sha256(data).hexdigest())

    def verify_all(self) -> None:
        for s in self.shards:
            self.verify_shard(s.name)

    def info(self, name: str) -> ShardInfo:
        for s in self.shards:
            if s.name == name:
                return s
        raise DataError(f"{self.shard_uri(name)}: not in {join(self.uri, INDEX_NAME)}")


def check_shard_bytes(index: ShardIndex, info: ShardInfo, data, digest: str | None) -> pa.Table:
    """Parse a shard, checking digest (if computed), size, schema and rows; DataError names the URI."""
    uri = index.shard_uri(info.name)
    fix = "the shard is corrupt or was replaced; re-run `bertctl prepare` into a fresh output directory"
    if digest is not None and digest != info.sha256:
        raise DataError(f"{uri}: sha256 {digest[:16]}... does not match the index ({info.sha256[:16]}...); {fix}")
    if len(data) != info.bytes:
        raise DataError(f"{uri}: {len(data)} bytes, the index says {info.bytes}; {fix}")
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{uri}: not a readable Arrow IPC file ({exc}); {fix}") from None
    if not table.schema.equals(index.schema):
        raise DataError(f"{uri}: schema {table.schema} does not match the index's {index.schema}; {fix}")
    if table.num_rows != info.rows:
        raise DataError(f"{uri}: {table.num_rows} rows, the index says {info.rows}; {fix}")
    return table

