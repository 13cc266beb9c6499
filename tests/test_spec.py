"""The manifest: a table of bad manifests, each naming its field; good ones parse; the CLI exits 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import ManifestError
from orchestrator.spec import (
    HIDDEN_ACTS, MAX_MANIFEST_CHARS, MAX_MANIFEST_DEPTH, MAX_MANIFEST_NODES, PRESETS, load_manifest,
    load_manifest_text, parse_manifest,
)

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "apiVersion": "bertctl/v1",
    "kind": "PretrainJob",
    "metadata": {"name": "unit-job"},
    "spec": {
        "model": {"preset": "bert-tiny"},
        "tokenizer": {"vocab_size": 1000},
        "data": {"shards": "/tmp/shards", "seq_len": 64},
        "training": {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 2},
        "resources": {"workers": 2},
        "checkpoint": {"uri": "/tmp/ckpt", "every_steps": 5},
    },
}


def mutate(path: str, value=None, delete: bool = False, base: dict | None = None) -> dict:
    doc = copy.deepcopy(base or GOOD)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if delete:
        del node[leaf]
    else:
        node[leaf] = value
    return doc


BAD = [
    ("wrong apiVersion", mutate("apiVersion", "bertctl/v2"), "apiVersion"),
    ("wrong kind", mutate("kind", "TrainJob"), "kind"),
    ("no metadata name", mutate("metadata.name", delete=True), "metadata.name"),
    ("uppercase name", mutate("metadata.name", "My_Job"), "metadata.name"),
    ("name too long", mutate("metadata.name", "a" * 64), "metadata.name"),
    ("unknown top-level spec field", mutate("spec.trainig", {}), "spec.trainig"),
    ("unknown data field", mutate("spec.data.shard", "/x"), "spec.data.shard"),
    ("unknown preset", mutate("spec.model.preset", "bert-huge"), "spec.model.preset"),
    ("unknown model override", mutate("spec.model.overrides", {"n_layers": 2}), "spec.model.overrides.n_layers"),
    ("heads do not divide hidden", mutate("spec.model.overrides", {"num_attention_heads": 3}),
     "spec.model.overrides.num_attention_heads"),
    ("hidden not a multiple of heads", mutate("spec.model.overrides", {"hidden_size": 129}),
     "spec.model.overrides.hidden_size"),
    ("positions not a number", mutate("spec.model.overrides", {"max_position_embeddings": "lots"}),
     "spec.model.overrides.max_position_embeddings"),
    ("positions as a boolean", mutate("spec.model.overrides", {"max_position_embeddings": True}),
     "spec.model.overrides.max_position_embeddings"),
    ("zero layers", mutate("spec.model.overrides", {"num_hidden_layers": 0}), "spec.model.overrides.num_hidden_layers"),
    ("intermediate size as a float", mutate("spec.model.overrides", {"intermediate_size": 512.5}),
     "spec.model.overrides.intermediate_size"),
    ("dropout of 1", mutate("spec.model.overrides", {"hidden_dropout_prob": 1.0}), "spec.model.overrides.hidden_dropout_prob"),
    ("negative attention dropout", mutate("spec.model.overrides", {"attention_probs_dropout_prob": -0.1}),
     "spec.model.overrides.attention_probs_dropout_prob"),
    ("unknown activation", mutate("spec.model.overrides", {"hidden_act": "gleu"}), "spec.model.overrides.hidden_act"),
    ("one token type with sentence pairs", mutate("spec.model.overrides", {"type_vocab_size": 1}),
     "spec.model.overrides.type_vocab_size"),
    ("NaN layer norm eps", mutate("spec.model.overrides", {"layer_norm_eps": float("nan")}),
     "spec.model.overrides.layer_norm_eps"),
    ("zero initializer range", mutate("spec.model.overrides", {"initializer_range": 0}),
     "spec.model.overrides.initializer_range"),
    ("positions below seq_len", mutate("spec.model.overrides", {"max_position_embeddings": 32}), "spec.data.seq_len"),
    ("infinite heartbeat timeout", mutate("spec.recovery.heartbeat_timeout_s", float("inf")),
     "spec.recovery.heartbeat_timeout_s"),
    ("no data section", mutate("spec.data", delete=True), "spec.data"),
    ("seq_len above positions", mutate("spec.data.seq_len", 1024), "spec.data.seq_len"),
    ("mlm probability 1.5", mutate("spec.data.mlm_probability", 1.5), "spec.data.mlm_probability"),
    ("nsp with tiny seq_len", mutate("spec.data.seq_len", 8), "spec.data.seq_len"),
    ("zero max_steps", mutate("spec.training.max_steps", 0), "spec.training.max_steps"),
    ("global batch not divisible", mutate("spec.training.global_batch_size", 10), "spec.training.global_batch_size"),
    ("elastic range with a bad count", mutate("spec.resources.workers", {"min": 1, "max": 3}),
     "spec.training.global_batch_size"),
    ("elastic min above max", mutate("spec.resources.workers", {"min": 4, "max": 2}), "spec.resources.workers"),
    ("zero workers", mutate("spec.resources.workers", 0), "spec.resources.workers"),
    ("unknown optimizer", mutate("spec.training.optimizer", "sgd"), "spec.training.optimizer"),
    ("bf16 without GPUs", mutate("spec.training.precision", "bf16"), "spec.training.precision"),
    ("fp16 without GPUs", mutate("spec.training.precision", "fp16"), "spec.training.precision"),
    ("lamb without GPUs", mutate("spec.training.optimizer", "lamb"), "spec.training.optimizer"),
    ("lamb in bf16", mutate("spec.training", {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 2,
                                              "optimizer": "lamb", "precision": "bf16"}), "spec.training.precision"),
    ("lamb under ZeRO", mutate("spec.training.optimizer", "lamb"), "spec.deepspeed.zero_stage"),
    ("warmup above max_steps", mutate("spec.training.warmup_steps", 11), "spec.training.warmup_steps"),
    ("negative lr", mutate("spec.training.lr", -1.0), "spec.training.lr"),
    ("zero stage 4", mutate("spec.deepspeed.zero_stage", 4), "spec.deepspeed.zero_stage"),
    ("param offload below stage 3", mutate("spec.deepspeed.offload_param", "cpu"), "spec.deepspeed.offload_param"),
    ("compile not a bool", mutate("spec.training.compile", "sometimes"), "spec.training.compile"),
    ("compile under ZeRO-3", mutate("spec.deepspeed.zero_stage", 3, base=mutate("spec.training.compile", True)),
     "spec.training.compile"),
    ("unpad with attention dropout", mutate("spec.training.unpad", True), "spec.training.unpad"),
    ("unpad with attention dropout 0.1", mutate("spec.model.overrides", {"attention_probs_dropout_prob": 0.1},
                                                base=mutate("spec.training.unpad", True)), "spec.training.unpad"),
    ("raw config sets the batch", mutate("spec.deepspeed.config", {"train_batch_size": 16}), "spec.deepspeed.config"),
    ("vocab and vocab_size both", mutate("spec.tokenizer", {"vocab": "v.txt", "vocab_size": 1000}), "spec.tokenizer"),
    ("neither vocab nor vocab_size", mutate("spec.tokenizer", {"lowercase": True}), "spec.tokenizer"),
    ("checkpoint without uri", mutate("spec.checkpoint", {"every_steps": 5}), "spec.checkpoint.uri"),
    ("checkpoint every 0", mutate("spec.checkpoint.every_steps", 0), "spec.checkpoint.every_steps"),
    ("checkpoint every sometimes", mutate("spec.checkpoint.every_steps", "sometimes"), "spec.checkpoint.every_steps"),
    ("keep_last 0", mutate("spec.checkpoint.keep_last", 0), "spec.checkpoint.keep_last"),
    ("bad memory quantity", mutate("spec.resources.memory_per_worker", "lots"), "spec.resources.memory_per_worker"),
    ("negative restarts", mutate("spec.recovery.max_restarts", -1), "spec.recovery.max_restarts"),
    ("deadline above heartbeat timeout", mutate("spec.recovery", {"heartbeat_timeout_s": 10}),
     "spec.checkpoint.preemption_deadline_s"),
    ("credential in a URI", mutate("spec.data.shards", "s3://AKIAABCDEFGHIJKLMNOP:secret@bucket/x"), "spec.data.shards"),
    ("access key in raw config", mutate("spec.deepspeed.config", {"note": "AKIAABCDEFGHIJKLMNOP"}),
     "spec.deepspeed.config.note"),
    ("unknown kubernetes field", mutate("spec.kubernetes", {"aws_secret_access_key": "x"}),
     "spec.kubernetes.aws_secret_access_key"),
]


@pytest.mark.parametrize("label,doc,field", BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_names_its_field(label, doc, field):
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc)
    paths = [p for p, _ in info.value.problems]
    assert field in paths, f"{label}: expected a problem at {field}, got {info.value.problems}"
    for _, message in info.value.problems:
        assert message, "every problem says what to do"


def test_good_manifest_parses_with_defaults():
    job = parse_manifest(copy.deepcopy(GOOD))
    assert job.spec.deepspeed.zero_stage == 2
    assert job.spec.training.precision == "fp32"
    assert job.spec.training.compile is False
    assert parse_manifest(mutate("spec.training.compile", True)).spec.training.compile is True  # at ZeRO-2
    assert job.spec.training.unpad is False
    packed = mutate("spec.model.overrides", {"attention_probs_dropout_prob": 0.0}, base=mutate("spec.training.unpad", True))
    assert parse_manifest(packed).spec.training.unpad is True
    assert job.spec.model.bert_config(vocab_size=1000)["hidden_size"] == PRESETS["bert-tiny"]["hidden_size"]


def test_elastic_range_where_every_count_keeps_the_global_batch():
    doc = mutate("spec.resources.workers", {"min": 1, "max": 4})
    doc["spec"]["training"]["global_batch_size"] = 24  # 24 = 2 x w x accum for w in 1..4
    job = parse_manifest(doc)
    assert list(job.spec.resources.worker_counts()) == [1, 2, 3, 4]


def test_an_elastic_range_needs_the_batch_rule_at_its_ends_only():
    from orchestrator.spec_rules import usable_worker_count

    doc = mutate("spec.resources.workers", {"min": 1, "max": 4})  # global 8, micro 2: 1, 2 and 4 keep it
    job = parse_manifest(doc)
    assert list(job.spec.resources.worker_counts()) == [1, 2, 3, 4]
    assert [usable_worker_count(8, 2, 1, n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 4, 4], "3 nodes form 2"
    assert usable_worker_count(8, 2, 3, 3) is None, "no count from 3 to 3 keeps the batch"
    with pytest.raises(ManifestError) as info:
        parse_manifest(mutate("spec.resources.workers", {"min": 3, "max": 4}))
    [(path, message)] = info.value.problems
    assert path == "spec.training.global_batch_size" and "workers=[3]" in message and "[4]" in message


def test_every_problem_is_reported_at_once():
    doc = mutate("spec.training.precision", "bf16")
    doc["spec"]["training"]["global_batch_size"] = 10
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc)
    paths = {p for p, _ in info.value.problems}
    assert {"spec.training.precision", "spec.training.global_batch_size"} <= paths


def test_with_absolute_paths_resolves_local_paths_and_keeps_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = mutate("spec.data.shards", "shards")
    doc["spec"]["checkpoint"]["uri"] = "s3://bucket/ckpt"
    job = parse_manifest(doc).with_absolute_paths()
    assert job.spec.data.shards == str(tmp_path.resolve() / "shards")
    assert job.spec.checkpoint.uri == "s3://bucket/ckpt"


EXAMPLES = sorted((ROOT / "jobs").glob("*.yaml"))


def test_the_example_manifests_are_found():
    assert "quickstart.yaml" in {p.name for p in EXAMPLES}, f"no example manifests under {ROOT / 'jobs'}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_manifest_is_valid_and_keeps_what_it_says(path):
    doc = yaml.safe_load(path.read_text())
    job = load_manifest(path)
    assert job.metadata.name == doc["metadata"]["name"]
    assert job.spec.training.max_steps == doc["spec"]["training"]["max_steps"]
    assert job.spec.checkpoint.uri == doc["spec"]["checkpoint"]["uri"]
    assert parse_manifest(job.to_dict()) == job  # what the CLI submits parses back to the same job


def run_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT)


def test_validate_cli_exit_codes(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    bad.write_text(yaml.safe_dump(mutate("spec.training.micro_batch_size", 3)))
    ok = run_validate(good)
    assert ok.returncode == 0, ok.stderr
    failed = run_validate(bad)
    assert failed.returncode == 2
    assert "spec.training.global_batch_size" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_validate_cli_on_missing_file_and_bad_yaml(tmp_path):
    missing = run_validate(tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "file not found" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    result = run_validate(broken)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_overrides_of_every_kind_that_builds_are_kept():
    overrides = {"num_hidden_layers": 3, "hidden_size": 96, "num_attention_heads": 3, "intermediate_size": 200,
                 "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.2,
                 "hidden_act": "gelu_new", "type_vocab_size": 2, "layer_norm_eps": 1e-12, "initializer_range": 0.02}
    job = parse_manifest(mutate("spec.model.overrides", overrides))
    cfg = job.spec.model.bert_config(vocab_size=1000)
    assert {k: cfg[k] for k in overrides} == overrides


def test_unknown_override_lists_the_valid_ones():
    with pytest.raises(ManifestError) as info:
        parse_manifest(mutate("spec.model.overrides", {"n_layers": 2}))
    [(path, message)] = info.value.problems
    assert path == "spec.model.overrides.n_layers" and "num_hidden_layers" in message


def test_activation_names_are_transformers_own():
    from transformers.activations import ACT2FN  # the manager never imports it; the test keeps the copy honest

    assert set(HIDDEN_ACTS) <= set(ACT2FN), set(HIDDEN_ACTS) - set(ACT2FN)


def _refused(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ManifestError) as info:
        load_manifest_text(text, "job.yaml")
    return info.value.problems


@pytest.mark.parametrize("text", ["a: " + "[" * 300 + "]" * 300, "{" * 5000, "- " * 400 + "x",
                                  "a: " + "{b: " * 3000 + "1" + "}" * 3000],
                         ids=["300 lists", "5000 open maps", "400 block lists", "3000 flow maps"])
def test_deep_nesting_is_a_manifest_error_naming_the_limit(text):
    [(path, message)] = _refused(text)
    assert path == "job.yaml" and f"limit of {MAX_MANIFEST_DEPTH} levels" in message


def test_deep_nesting_through_an_alias_is_refused():
    text = "a: &a " + "[" * 20 + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20
    [(_, message)] = _refused(text)
    assert f"limit of {MAX_MANIFEST_DEPTH} levels" in message


def test_alias_bomb_is_refused_not_expanded():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10^9 values
    [(_, message)] = _refused("\n".join(lines))
    assert f"limit of {MAX_MANIFEST_NODES} values" in message


def test_oversized_manifest_is_refused():
    [(_, message)] = _refused("a: " + "x" * MAX_MANIFEST_CHARS)
    assert "above the limit" in message


def test_a_manifest_within_the_limits_with_anchors_parses():
    doc, selector = copy.deepcopy(GOOD), {"team": "nlp"}
    doc["spec"]["kubernetes"] = {"head_node_selector": selector, "worker_node_selector": selector}
    text = yaml.safe_dump(doc)  # a shared object is written once, as an anchor and an alias
    assert "*id001" in text
    assert load_manifest_text(text).spec.kubernetes.worker_node_selector == selector


@pytest.mark.parametrize("text,field", [
    (yaml.safe_dump(mutate("spec.model.overrides", {"max_position_embeddings": "lots"})),
     "spec.model.overrides.max_position_embeddings"),
    ("apiVersion: bertctl/v1\nkind: PretrainJob\nspec: " + "[" * 300 + "]" * 300, "limit of"),
], ids=["override of the wrong type", "300 levels"])
def test_validate_cli_refuses_bad_input_with_exit_2(tmp_path, text, field):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = run_validate(path)
    assert result.returncode == 2, result.stderr
    assert field in result.stderr and "Traceback" not in result.stderr


def test_validate_cli_on_a_binary_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"apiVersion: \xff\xfe\x00")
    result = run_validate(path)
    assert result.returncode == 2 and "not UTF-8" in result.stderr and "Traceback" not in result.stderr
