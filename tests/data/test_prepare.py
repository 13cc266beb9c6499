"""Prepare: round trip (every token once), checksums, determinism, inputs, errors, Ray path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data.index import ShardIndex
from orchestrator.data.prepare import PrepareConfig, prepare
from orchestrator.data.sources import BUILTIN_STDLIB, list_units, read_documents, split_sentences
from orchestrator.data.vocab import load_tokenizer_json
from orchestrator.errors import DataError, PermanentError


def corpus_tokens(index: ShardIndex, inputs: list[str]) -> list[list[int]]:
    """Independent re-tokenization: the token ids of every document, in input order."""
    tok = load_tokenizer_json(Path(index.tokenizer_uri("tokenizer")).read_text())
    docs = []
    for unit in list_units(inputs):
        for doc in read_documents(unit):
            docs.append([t for s in split_sentences(doc) for t in tok.encode(s, add_special_tokens=False).ids])
    return docs


def shard_rows(index: ShardIndex):
    for s in index.shards:
        table = pa.ipc.open_file(index.shard_uri(s.name)).read_all()
        for ids, length, a_end, label in zip(*(table.column(i).to_pylist() for i in range(4))):
            yield ids, length, a_end, label


def test_round_trip_without_nsp_every_token_once(small_corpus, tmp_path):
    index = prepare(PrepareConfig(inputs=small_corpus, output=str(tmp_path / "s"), seq_len=32, vocab_size=800,
                                  nsp=False, use_ray=False, shard_bytes=4096), progress=False)
    sp = index.special_tokens
    got = []
    for ids, length, a_end, _ in shard_rows(index):
        assert ids[0] == sp["[CLS]"] and ids[length - 1] == sp["[SEP]"] and a_end == length
        assert all(t == sp["[PAD]"] for t in ids[length:])
        got += ids[1:length - 1]
    expected = [t for d in corpus_tokens(index, small_corpus) for t in d]
    assert got == expected and len(expected) == index.tokens > 5000
    assert len(index.shards) > 3


def test_round_trip_with_nsp_real_segments_cover_corpus_once(small_corpus, tmp_path):
    index = prepare(PrepareConfig(inputs=small_corpus, output=str(tmp_path / "s"), seq_len=48, vocab_size=800,
                                  nsp=True, use_ray=False, shard_bytes=8192), progress=False)
    sep = index.special_tokens["[SEP]"]
    docs = corpus_tokens(index, small_corpus)
    flat = np.array([t for d in docs for t in d], dtype=np.int32)
    real, labels = [], []
    flat_bytes = flat.tobytes()
    for ids, length, a_end, label in shard_rows(index):
        assert ids[a_end - 1] == sep and ids[length - 1] == sep and length <= 48
        real += ids[1:a_end - 1]
        b = ids[a_end:length - 1]
        labels.append(label)
        if label == 0:
            real += b
        else:  # a random next segment: a real run of another document's tokens
            assert b and np.array(b, dtype=np.int32).tobytes() in flat_bytes
    assert real == flat.tolist()
    assert 0.35 < np.mean(labels) < 0.65


def test_checksums_match_and_rerun_is_byte_identical(small_corpus, tmp_path):
    first = prepare(PrepareConfig(inputs=small_corpus, output=str(tmp_path / "v"), seq_len=32, vocab_size=800,
                                  use_ray=False), progress=False)
    vocab = str(tmp_path / "vocab.txt")
    Path(vocab).write_bytes(Path(first.tokenizer_uri("vocab")).read_bytes())
    cfg = dict(inputs=small_corpus, seq_len=32, vocab=vocab, vocab_size=None, use_ray=False, shard_bytes=8192)
    a = prepare(PrepareConfig(output=str(tmp_path / "a"), **cfg), progress=False)
    b = prepare(PrepareConfig(output=str(tmp_path / "b"), **cfg), progress=False)
    a.verify_all()
    assert a.to_json() == b.to_json()
    for s in a.shards:
        assert Path(a.shard_uri(s.name)).read_bytes() == Path(b.shard_uri(s.name)).read_bytes()
    again = prepare(PrepareConfig(output=str(tmp_path / "a"), **cfg), progress=False)
    assert again.to_json() == a.to_json()  # a committed index is reused as is


def test_rerun_with_a_trained_vocabulary_reuses_it_and_is_identical(small_corpus, tmp_path):
    cfg = PrepareConfig(inputs=small_corpus, output=str(tmp_path / "a"), seq_len=32, vocab_size=800,
                        use_ray=False, shard_bytes=8192)
    a = prepare(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.arrow")}
    (tmp_path / "a/index.json").unlink()
    for p in list((tmp_path / "a").glob("*.arrow"))[::2]:
        p.unlink()
    b = prepare(cfg, progress=False)
    assert b.to_json() == a.to_json()
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.arrow")} == before


def test_jsonl_and_parquet_inputs_give_the_same_shards_as_text(small_corpus, tmp_path):
    docs = [d for p in small_corpus for d in Path(p).read_text().split("\n\n") if d.strip()]
    (tmp_path / "j").mkdir()
    (tmp_path / "j/c.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"body": docs}), tmp_path / "p/c.parquet")
    vocab = str(tmp_path / "vocab.txt")
    base = prepare(PrepareConfig(inputs=small_corpus, output=str(tmp_path / "t"), seq_len=32, vocab_size=600,
                                 nsp=False, use_ray=False), progress=False)
    Path(vocab).write_bytes(Path(base.tokenizer_uri("vocab")).read_bytes())
    cfg = dict(seq_len=32, vocab=vocab, vocab_size=None, nsp=False, use_ray=False, text_column="body")
    j = prepare(PrepareConfig(inputs=[str(tmp_path / "j")], output=str(tmp_path / "jo"), **cfg), progress=False)
    p = prepare(PrepareConfig(inputs=[str(tmp_path / "p/c.parquet")], output=str(tmp_path / "po"), **cfg),
                progress=False)
    rows = lambda ix: [r[0][:r[1]] for r in shard_rows(ix)]  # noqa: E731
    assert rows(j) == rows(p) == rows(base) and j.tokens == base.tokens


def test_ray_tasks_give_the_same_shards_as_in_process(small_corpus, small_vocab, tmp_path):
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = dict(inputs=[str(Path(small_corpus[0]).parent)], seq_len=32, vocab=small_vocab, vocab_size=None,
                   shard_bytes=8192)
        on_ray = prepare(PrepareConfig(output=str(tmp_path / "r"), use_ray=True, **cfg), progress=True)
    finally:
        ray.shutdown()
    local = prepare(PrepareConfig(output=str(tmp_path / "l"), use_ray=False, **cfg), progress=False)
    assert on_ray.to_json() == local.to_json()
    assert len({s.name.split("-")[1] for s in on_ray.shards}) == 3  # one unit per input file


def test_builtin_stdlib_corpus_is_real_prose():
    units = list_units([BUILTIN_STDLIB])
    docs = list(read_documents(units[0]))
    text = " ".join(docs)
    assert len(docs) > 40 and len(text) > 100_000
    assert text.count(" the ") > 500 and list(read_documents(units[0])) == docs


def test_missing_or_invalid_index_names_the_uri(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/index.json.*bertctl prepare"):
        ShardIndex.load(str(tmp_path))
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid index.json"):
        ShardIndex.load(str(tmp_path))


def test_bad_inputs_and_settings_are_permanent_errors(tmp_path, small_corpus):
    with pytest.raises(DataError, match="input not found"):
        prepare(PrepareConfig(inputs=[str(tmp_path / "nope.txt")], output=str(tmp_path / "o"), use_ray=False))
    with pytest.raises(PermanentError, match="exactly one of"):
        PrepareConfig(inputs=["x"], output="o", vocab="v.txt", vocab_size=100)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl:2.*text-column"):
        prepare(PrepareConfig(inputs=[str(tmp_path / "bad.jsonl")], output=str(tmp_path / "o2"), use_ray=False))
    out = str(tmp_path / "o3")
    prepare(PrepareConfig(inputs=small_corpus[:1], output=out, seq_len=32, vocab_size=300, use_ray=False), False)
    with pytest.raises(DataError, match="other settings"):
        prepare(PrepareConfig(inputs=small_corpus[:1], output=out, seq_len=64, vocab_size=300, use_ray=False), False)


def test_cli_prepare_writes_an_index_and_exits_2_on_error(tmp_path, small_corpus):
    bertctl = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
    ok = subprocess.run(bertctl + ["prepare", "--input", small_corpus[0], "--output", str(tmp_path / "o"),
                                   "--seq-len", "32", "--vocab-size", "300", "--local", "--quiet"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ShardIndex.load(str(tmp_path / "o")).seq_len == 32
    bad = subprocess.run(bertctl + ["prepare", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "x"),
                                    "--seq-len", "32", "--local"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing: input not found" in bad.stderr


def test_prepare_for_job_prepares_once_then_reuses(small_corpus, tmp_path):
    from orchestrator.data.prepare import prepare_for_job
    from orchestrator.spec import parse_manifest

    shards = str(tmp_path / "shards")
    job = parse_manifest({
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "prep-test"},
        "spec": {"tokenizer": {"vocab_size": 300},
                 "data": {"shards": shards, "seq_len": 32, "nsp": False, "prepare": {"inputs": small_corpus[:1]}},
                 "training": {"max_steps": 1, "global_batch_size": 4, "micro_batch_size": 4},
                 "checkpoint": {"uri": str(tmp_path / "ckpt")}}})
    first = prepare_for_job(job)
    assert first.seq_len == 32 and not first.nsp and (tmp_path / "shards/tokenizer/vocab.txt").exists()
    mtime = (tmp_path / "shards/index.json").stat().st_mtime_ns
    assert prepare_for_job(job).to_json() == first.to_json()
    assert (tmp_path / "shards/index.json").stat().st_mtime_ns == mtime  # skipped: a valid index exists
    job.spec.data.seq_len = 64
    with pytest.raises(DataError, match="seq_len=32.*seq_len=64"):
        prepare_for_job(job)
