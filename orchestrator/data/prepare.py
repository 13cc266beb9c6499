"""``bertctl prepare``: corpus -> WordPiece vocabulary -> packed rows -> Arrow IPC shards + index.json.

Restart and determinism rules (the invariants the chaos tests check):
- every unit (input file / stdlib part) is tokenized by one Ray task and writes its own shards
  ``shard-<unit>-<n>.arrow`` then a marker ``_prepare/unit-<unit>.json``; a re-run reuses a unit
  whose marker matches this configuration, and redoes any other (its shards are rewritten whole);
- every write is atomic (rename locally, a single PUT on S3) and ``index.json`` is written last,
  so no index ever names a missing or partial shard;
- everything random is seeded from (seed, unit), so re-running with the same vocabulary gives
  byte-identical shards (a vocabulary trained again may differ: the tokenizers trainer breaks ties
  in hash order).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from orchestrator.data import pack, vocab as vocab_mod
from orchestrator.data.index import FORMAT_VERSION, INDEX_NAME, ShardIndex, ShardInfo
from orchestrator.data.ray_cluster import local_cpus, start_or_join_ray
from orchestrator.data.shards import write_shards
from orchestrator.data.sources import Unit, list_units, read_documents, sentence_starts
from orchestrator.errors import BertctlError, DataError, PermanentError
from orchestrator.spec import DEFAULT_VOCAB_SIZE
from orchestrator.storage import join, storage_for

STATE_DIR = "_prepare"
ENCODE_BATCH = 256  # documents per encode_batch call


@dataclass
class PrepareConfig:
    """What ``bertctl prepare`` builds; every field is also a CLI flag or a manifest field."""

    inputs: list[str]                     # files, directories, s3:// prefixes or builtin:python-stdlib-docs
    output: str                           # shard directory (local or s3://); index.json goes here last
    seq_len: int = 128                    # tokens per row including [CLS]/[SEP]
    vocab_size: int | None = DEFAULT_VOCAB_SIZE  # train a WordPiece vocabulary of this size ...
    vocab: str | None = None              # ... or use this vocab.txt as is
    lowercase: bool = True
    nsp: bool = True                      # sentence pairs with next-sentence labels
    seed: int = 1234                      # seeds NSP pairing; same seed and vocab -> byte-identical shards
    text_column: str = "text"             # JSONL field / Parquet column holding the text
    shard_bytes: int = 128 * 2**20        # target shard size
    use_ray: bool = True                  # tokenize units as Ray tasks (False: in this process)
    cpus_per_task: float = 1.0            # Ray resources of each tokenization task
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise PermanentError("prepare needs at least one input (--input PATH)")
        if not 8 <= self.seq_len <= 8192:
            raise PermanentError(f"seq_len {self.seq_len} must be within 8..8192")
        if (self.vocab is None) == (self.vocab_size is None):
            raise PermanentError("give exactly one of vocab_size (train a vocabulary) or vocab (a vocab.txt)")
        if self.shard_bytes < 2**12:
            raise PermanentError(f"shard_bytes {self.shard_bytes} is too small; use at least 4096")

    def fingerprint(self) -> str:
        keys = ("inputs", "seq_len", "vocab_size", "vocab", "lowercase", "nsp", "seed", "text_column",
                "shard_bytes")
        blob = json.dumps({k: getattr(self, k) for k in keys} | {"format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def prepare(config: PrepareConfig, progress: bool = True) -> ShardIndex:
    """Build (or finish building) the shard set; returns its committed index."""
    out = config.output.rstrip("/")
    existing = _committed_index(config)
    if existing is not None:
        return existing
    units = list_units(config.inputs)
    tok, files, tok_hash = _tokenizer(config, units)
    task = _UnitTask(config, tok.to_str(), vocab_mod.special_ids(tok), config.fingerprint() + tok_hash,
                     (0, tok.get_vocab_size() - 1))
    markers = _run_units(task, units, progress)
    shards = [ShardInfo(**s) for m in markers for s in m["shards"]]
    index = ShardIndex(uri=out, shards=shards, seq_len=config.seq_len, nsp=config.nsp,
                       vocab_size=tok.get_vocab_size(), lowercase=config.lowercase,
                       special_tokens=vocab_mod.special_ids(tok), tokenizer_files=files,
                       tokenizer_sha256=tok_hash, tokens=sum(m["tokens"] for m in markers),
                       extra={"fingerprint": config.fingerprint(), "seed": config.seed})
    if not shards:
        raise DataError(f"{config.inputs}: the corpus produced no rows; check the inputs and --text-column")
    storage_for(out).write_bytes(join(out, INDEX_NAME), index.to_json().encode())  # the commit, last
    return index


def prepare_for_job(job) -> ShardIndex:
    """Shards for a PretrainJob: reuse a valid index.json, else prepare from spec.data.prepare."""
    data, tok = job.spec.data, job.spec.tokenizer
    if storage_for(data.shards).exists(join(data.shards, INDEX_NAME)) or data.prepare is None:
        index = ShardIndex.load(data.shards)
        _check_matches(index, data.seq_len, data.nsp, data.shards)
        return index
    cfg = PrepareConfig(inputs=list(data.prepare.inputs), output=data.shards, seq_len=data.seq_len,
                        vocab_size=None if tok.vocab else (tok.vocab_size or DEFAULT_VOCAB_SIZE), vocab=tok.vocab,
                        lowercase=tok.lowercase, nsp=data.nsp, seed=data.seed,
                        text_column=data.prepare.text_column, shard_bytes=data.prepare.shard_bytes)
    return prepare(cfg, progress=True)


def coverage_for_job(job, index: ShardIndex) -> str | None:
    """The inputs this job's run never reaches in its epoch's shard order, with the fix; None when it reads all."""
    from orchestrator.data.coverage import coverage_warning

    data, training = job.spec.data, job.spec.training
    rows = training.max_steps * training.global_batch_size
    if coverage_warning(index, data.seed, data.shuffle_window, rows) is None:
        return None
    return coverage_warning(index, data.seed, data.shuffle_window, rows, unit_labels(data.shards))


def unit_labels(shards_uri: str) -> dict[int, str]:
    """Each prepared unit's source (its marker says), for messages; units without a readable marker are left out."""
    store, labels = storage_for(shards_uri), {}
    try:
        found = store.list_files(join(shards_uri, STATE_DIR))
    except BertctlError:
        return {}
    for uri in found:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if not (name.startswith("unit-") and name.endswith(".json")):
            continue
        try:
            labels[int(name[5:-5])] = json.loads(store.read_bytes(uri))["unit"]
        except (ValueError, KeyError, TypeError, OSError, BertctlError):
            continue
    return labels


def _check_matches(index: ShardIndex, seq_len: int, nsp: bool, uri: str) -> None:
    if index.seq_len != seq_len or index.nsp != nsp:
        raise DataError(f"{uri}: shards were prepared with seq_len={index.seq_len}, nsp={index.nsp} but the "
                        f"job asks for seq_len={seq_len}, nsp={nsp}; fix spec.data or prepare a new shard URI")


def _committed_index(config: PrepareConfig) -> ShardIndex | None:
    uri = join(config.output, INDEX_NAME)
    if not storage_for(config.output).exists(uri):
        return None
    index = ShardIndex.load(config.output)
    if index.extra.get("fingerprint") != config.fingerprint():
        raise DataError(f"{config.output} already holds shards prepared with other settings; choose a new "
                        "--output or delete that directory")
    return index


def _tokenizer(config: PrepareConfig, units: list[Unit]):
    """The vocabulary, saved under the output. A restart reuses the one already saved there: the
    `tokenizers` trainer breaks frequency ties in hash order, so re-training is not bit-stable."""
    store, out = storage_for(config.output), config.output.rstrip("/")
    marker = join(out, STATE_DIR, "tokenizer.json")
    if store.exists(marker) and json.loads(store.read_bytes(marker)).get("fingerprint") == config.fingerprint():
        tok = vocab_mod.load_tokenizer_json(store.read_bytes(join(out, vocab_mod.TOKENIZER_FILE)).decode())
        info = json.loads(store.read_bytes(marker))
        return tok, info["files"], info["sha256"]
    if config.vocab:
        tok = vocab_mod.load_vocab(config.vocab, config.lowercase)
    else:
        texts = (doc for u in units for doc in read_documents(u, config.text_column))
        tok = vocab_mod.train_tokenizer(texts, config.vocab_size, config.lowercase)
    files, digest = vocab_mod.save_tokenizer(tok, out)
    store.write_bytes(marker, json.dumps({"fingerprint": config.fingerprint(), "files": files,
                                          "sha256": digest}).encode())
    return tok, files, digest


@dataclass
class _UnitTask:
    """Everything one tokenization task needs (picklable for Ray)."""

    config: PrepareConfig
    tokenizer_json: str
    specials: dict[str, int]
    fingerprint: str
    vocab_ids: tuple[int, ...] = ()

    def marker_uri(self, i: int) -> str:
        return join(self.config.output, STATE_DIR, f"unit-{i:05d}.json")

    def __call__(self, i: int, unit: Unit) -> dict:
        store = storage_for(self.config.output)
        done = self._finished(store, i)
        if done is not None:
            return done | {"reused": True}
        docs = self._encode(unit)
        arrays = pack.to_arrays(docs, self._pack(docs, i), self.config.seq_len, self.specials["[CLS]"],
                                self.specials["[SEP]"], self.specials["[PAD]"], self._dtype())
        shards = write_shards(self.config.output, f"shard-{i:05d}", arrays, self.config.seq_len,
                              self._vocab_size(), self.config.shard_bytes)
        marker = {"unit": unit.label, "fingerprint": self.fingerprint, "shards": [asdict(s) for s in shards],
                  "tokens": sum(len(d.ids) for d in docs)}
        store.write_bytes(self.marker_uri(i), json.dumps(marker, sort_keys=True).encode())
        return marker | {"reused": False}

    def _finished(self, store, i: int) -> dict | None:
        uri = self.marker_uri(i)
        if not store.exists(uri):
            return None
        marker = json.loads(store.read_bytes(uri))
        if marker.get("fingerprint") != self.fingerprint:
            return None
        ok = all(store.exists(join(self.config.output, s["name"])) for s in marker["shards"])
        return marker if ok else None

    def _vocab_size(self) -> int:
        return 1 + max(self.vocab_ids)

    def _dtype(self):
        return np.uint16 if self._vocab_size() <= 2**16 else np.int32

    def _encode(self, unit: Unit) -> list[pack.Doc]:
        """Tokenize whole documents (one encode_batch per batch of documents) and find sentence
        starts from the token offsets; documents without tokens are dropped."""
        tok = vocab_mod.load_tokenizer_json(self.tokenizer_json)
        limit = self.config.seq_len - (3 if self.config.nsp else 2)
        docs: list[pack.Doc] = []
        batch: list[str] = []
        for text in [*read_documents(unit, self.config.text_column), None]:
            if text is not None:
                batch.append(text)
            if batch and (text is None or len(batch) == ENCODE_BATCH):
                for doc_text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False)):
                    if enc.ids:
                        offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
                        docs.append(pack.make_doc(np.array(enc.ids, dtype=np.int64),
                                                  sentence_starts(doc_text, offsets), limit))
                batch = []
        return docs

    def _pack(self, docs: list[pack.Doc], i: int) -> list[pack.Row]:
        if not self.config.nsp:
            return pack.pack_plain(docs, self.config.seq_len)
        # seeded by the unit's position, not its path: the same corpus moved to s3:// gives the same shards
        return pack.pack_nsp(docs, self.config.seq_len, np.random.default_rng([self.config.seed, i]))


def _run_units(task: _UnitTask, units: list[Unit], progress: bool) -> list[dict]:
    from orchestrator.data.progress import PrepareProgress

    with PrepareProgress(len(units), enabled=progress) as bar:
        if not task.config.use_ray:
            results = []
            for i, u in enumerate(units):
                results.append(task(i, u))
                bar.advance(results[-1]["tokens"])
            return results
        return _run_on_ray(task, units, bar)


def _run_on_ray(task: _UnitTask, units: list[Unit], bar) -> list[dict]:
    import ray

    # A fresh local cluster gets one CPU slot per unit (units are what runs in parallel), at least 2.
    started = start_or_join_ray(local_cpus(len(units), floor=2), log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=task.config.cpus_per_task, max_retries=3)(_call_task)
        pending = {remote.remote(task, i, u): i for i, u in enumerate(units)}
        results: dict[int, dict] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                results[pending.pop(ref)] = marker = ray.get(ref)
                bar.advance(marker["tokens"])
            bar.tick()
        return [results[i] for i in range(len(units))]
    finally:
        if started:
            ray.shutdown()


def _call_task(task: _UnitTask, i: int, unit: Unit) -> dict:
    return task(i, unit)

