"""Which prepared inputs a run shorter than an epoch reads: checked against the real epoch order and on
a real prepared corpus, so that a run that would never see some of its inputs is told so before it starts."""

from __future__ import annotations

import numpy as np

from orchestrator.data.coverage import coverage_warning, unit_of, units_read
from orchestrator.data.index import ShardIndex, ShardInfo
from orchestrator.data.order import global_order
from orchestrator.data.prepare import PrepareConfig, coverage_for_job, prepare
from orchestrator.spec import parse_manifest


def _index(shards_per_unit: int, rows_per_unit: int = 1000, units: int = 4) -> ShardIndex:
    rows = rows_per_unit // shards_per_unit
    shards = [ShardInfo(f"shard-{u:05d}-{n:04d}.arrow", rows, rows * 100, "0" * 64)
              for u in range(units) for n in range(shards_per_unit)]
    return ShardIndex(uri="/nowhere", shards=shards, seq_len=64, nsp=False, vocab_size=1000, lowercase=True,
                      special_tokens={}, tokenizer_files={}, tokenizer_sha256="")


def _units_really_read(index: ShardIndex, seed: int, window: int, rows: int) -> set[int]:
    """The units of the samples the epoch order actually yields first (the loader's own order)."""
    ids = global_order(index, seed, 0, window, count=rows)
    first_id = np.concatenate([[0], np.cumsum([s.rows for s in index.shards])])
    shard = np.searchsorted(first_id, ids, side="right") - 1
    return {unit_of(index.shards[int(i)].name) for i in np.unique(shard)}


def test_one_shard_per_input_a_quarter_epoch_reads_one_input_and_the_warning_names_the_others():
    index = _index(shards_per_unit=1)
    read = units_read(index, seed=1234, window=100, rows=1000)
    assert read == _units_really_read(index, 1234, 100, 1000) and len(read) == 1
    labels = {u: f"/corpus/part-{u}.txt" for u in range(4)}
    warning = coverage_warning(index, 1234, 100, 1000, labels)
    missed = [labels[u] for u in range(4) if u not in read]
    assert warning is not None and "never reaches 3 of the 4 prepared inputs" in warning
    assert all(name in warning for name in missed) and labels[next(iter(read))] not in warning
    assert "shard_bytes" in warning and "shuffle_window" in warning and "1,000 of the 4,000 rows" in warning


def test_the_estimate_is_an_upper_bound_of_what_the_order_reads():
    for shards_per_unit, window, rows in ((1, 100, 1000), (4, 300, 700), (10, 50, 333), (16, 1000, 1200)):
        index = _index(shards_per_unit)
        for seed in (0, 7, 1234):
            assert _units_really_read(index, seed, window, rows) <= units_read(index, seed, window, rows)


def test_many_shards_per_input_mix_and_no_warning_is_given():
    index = _index(shards_per_unit=25)
    assert _units_really_read(index, 1234, 100, 1000) == {0, 1, 2, 3}
    assert coverage_warning(index, 1234, 100, 1000) is None


def test_a_run_of_an_epoch_or_more_reads_everything():
    index = _index(shards_per_unit=1)
    assert coverage_warning(index, 1234, 100, 4000) is None and units_read(index, 1234, 100, 8000) == {0, 1, 2, 3}


def test_the_advice_sizes_shards_for_the_smallest_input():
    index = _index(shards_per_unit=1, rows_per_unit=20_000)   # 2,000,000 bytes per input, one shard each
    warning = coverage_warning(index, 1234, 100, 2000)
    # 2,000,000 / 8 = 250,000 bytes = 0.24 MiB: the power of two below it is 0.125 MiB
    assert "about 0.125 MiB gives every input 8 or more" in warning


def test_a_job_over_a_real_prepared_corpus_is_warned_with_its_file_names(small_corpus, tmp_path):
    out = str(tmp_path / "shards")
    index = prepare(PrepareConfig(inputs=small_corpus, output=out, seq_len=32, vocab_size=800, nsp=False,
                                  use_ray=False), progress=False)
    assert len(index.shards) == len(small_corpus)   # 128 MiB shards: one per file
    doc = {"apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "mix"},
           "spec": {"model": {"preset": "bert-tiny"}, "tokenizer": {"vocab_size": 800},
                    "data": {"shards": out, "seq_len": 32, "nsp": False, "shuffle_window": 50},
                    "training": {"max_steps": 2, "global_batch_size": 8, "micro_batch_size": 4},
                    "resources": {"workers": 1}, "checkpoint": {"uri": str(tmp_path / "ck"), "every_steps": 1}}}
    warning = coverage_for_job(parse_manifest(doc), index)
    assert warning is not None and "16 of the" in warning
    never = [path for path in small_corpus if path in warning]
    assert len(never) == len(small_corpus) - 1
    doc["spec"]["training"]["max_steps"] = index.total_rows // 8 + 1
    assert coverage_for_job(parse_manifest(doc), index) is None
