"""Property-based tests over manifests: mutations of the real jobs/*.yaml either parse or are
refused with a ManifestError naming a field; `bertctl validate` exits 0 or 2, never with a traceback.

The strategies here are shared with tests/manager/test_fuzz_api.py (imported as a module).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ManifestError
from orchestrator.spec import MAX_MANIFEST_DEPTH, OVERRIDABLE, load_manifest_text, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "jobs").glob("*.yaml"))}
TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec")
WHOLE_DOCUMENT = ("<manifest>", "<root>", "<request body>")

# Any value a YAML or JSON document can hold, of any type, a few levels deep.
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats() | st.text(max_size=20) | st.sampled_from(["", "auto", "0", "-1", "1e400", "bert-base"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a document (mapping keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        return out + [p for k, v in node.items() for p in paths_of(v, prefix + (k,))]
    if isinstance(node, list):
        return out + [p for i, v in enumerate(node) for p in paths_of(v, prefix + (i,))]
    return out


def nested(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"x": value}
    return value


@st.composite
def mutation(draw, doc: dict) -> dict:
    """One change to a document: a value of another type, a deleted key, an unknown key, deep nesting."""
    doc = copy.deepcopy(doc)
    *parents, leaf = draw(st.sampled_from(paths_of(doc)))
    node = doc
    for key in parents:
        node = node[key]
    kind = draw(st.sampled_from(["replace", "delete", "unknown", "nest"]))
    if kind == "delete":
        del node[leaf]
    elif kind == "unknown" and isinstance(node[leaf], dict):
        node[leaf][draw(st.text(min_size=1, max_size=10))] = draw(JSONISH)
    elif kind == "nest":
        node[leaf] = nested(draw(JSONISH), draw(st.integers(1, 3 * MAX_MANIFEST_DEPTH)), draw(st.booleans()))
    else:
        node[leaf] = draw(JSONISH)
    return doc


@st.composite
def mutated_manifest(draw) -> dict:
    doc = EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]
    for _ in range(draw(st.integers(1, 3))):
        doc = draw(mutation(doc))
    return doc


def as_text(doc: Any) -> str:
    """JSON (a YAML subset), which also writes documents too deep for PyYAML's own dumper."""
    return json.dumps(doc)


@st.composite
def manifest_text(draw) -> str:
    """A mutated manifest as text, sometimes also cut or spliced at the character level."""
    doc = draw(mutated_manifest())
    text = yaml.safe_dump(doc) if draw(st.booleans()) and depth_of(doc) < 20 else as_text(doc)
    if draw(st.integers(0, 3)) == 0:  # nesting far past Python's recursion limit, written as text
        levels, sentinel = draw(st.integers(MAX_MANIFEST_DEPTH, 3000)), "__deep__"
        doc = copy.deepcopy(doc)
        *parents, leaf = draw(st.sampled_from(paths_of(doc) or [("spec",)]))
        node = doc
        for key in parents:
            node = node[key]
        node[leaf] = sentinel
        opener = draw(st.sampled_from(["[", '{"a": ']))
        text = as_text(doc).replace(json.dumps(sentinel), opener * levels + "1" + ("]" if opener == "[" else "}") * levels)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=30)) + text[cut + draw(st.integers(0, 30)):]
    return text


def depth_of(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((depth_of(v) for v in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((depth_of(v) for v in node), default=0)
    return 0


def check_refusal(exc: ManifestError) -> None:
    """A refusal lists at least one problem, each naming a field (or the whole document) and a fix."""
    assert exc.problems
    for path, message in exc.problems:
        assert message.strip(), path
        # A known section's field, the whole document, or a key the input added (named as written).
        assert path.split(".")[0] in TOP_LEVEL or path in WHOLE_DOCUMENT or "unknown field" in message, path


def check_accepted(job) -> None:
    """What parses is finite JSON and parses back to the same job (what the CLI submits, the manager stores)."""
    doc = job.to_dict()
    json.dumps(doc, allow_nan=False)
    assert parse_manifest(doc) == job


@settings(max_examples=250)
@given(mutated_manifest())
def test_mutated_manifest_objects_parse_or_name_a_field(doc):
    try:
        job = parse_manifest(doc)
    except ManifestError as exc:
        check_refusal(exc)
    else:
        check_accepted(job)


@settings(max_examples=250)
@given(manifest_text())
def test_mutated_manifest_text_parses_or_names_a_field(text):
    try:
        job = load_manifest_text(text)
    except ManifestError as exc:
        check_refusal(exc)
    else:
        check_accepted(job)


OVERRIDE_VALUES = st.one_of(JSONISH, st.integers(-10, 5000), st.floats(-1, 2),
                            st.sampled_from(["gelu", "relu", "swish", "GELU", "lots"]))


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(sorted(OVERRIDABLE) + ["n_layers"]), OVERRIDE_VALUES, max_size=4))
def test_any_overrides_give_a_buildable_config_or_a_field_problem(overrides):
    doc = copy.deepcopy(EXAMPLES["quickstart.yaml"])
    doc["spec"]["model"]["overrides"] = overrides
    try:
        job = parse_manifest(doc)
    except ManifestError as exc:
        check_refusal(exc)
        return
    cfg = job.spec.model.bert_config(vocab_size=100)
    # What the model build needs, checked without importing torch here.
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    assert cfg["max_position_embeddings"] >= job.spec.data.seq_len
    assert all(type(cfg[k]) is int and cfg[k] >= 1 for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))
    assert all(0 <= cfg.get(k, 0.1) < 1 and math.isfinite(cfg.get(k, 0.1))
               for k in ("hidden_dropout_prob", "attention_probs_dropout_prob"))


@contextlib.contextmanager
def argv(*args: str):
    saved = sys.argv
    sys.argv = ["bertctl", *args]
    try:
        yield
    finally:
        sys.argv = saved


def run_cli_in_process(*args: str) -> tuple[int, str]:
    """`bertctl <args>` through the real entry point (main), in this process: (exit code, stderr)."""
    from orchestrator.cli import main

    err = io.StringIO()
    with argv(*args), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit as exc:
            return (exc.code if isinstance(exc.code, int) else 1), err.getvalue()
    return 0, err.getvalue()


@pytest.fixture(scope="module")
def manifests_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-manifests")


@settings(max_examples=60)
@given(text=manifest_text(), raw=st.binary(max_size=40))
def test_validate_cli_exits_0_or_2_never_a_traceback(manifests_dir, text, raw):
    path = manifests_dir / "job.yaml"
    # Sometimes not UTF-8 at all: a binary file given by mistake.
    path.write_bytes(text.encode("utf-8", "surrogatepass") + (raw if raw.startswith(b"\xff") else b""))
    code, stderr = run_cli_in_process("validate", str(path))
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    if code == 2:
        assert "problem" in stderr
