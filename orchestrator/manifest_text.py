"""A manifest's text before it is a PretrainJob: reading the file, bounding its size, depth and
node count while YAML is parsed, and refusing values that look like credentials.

A leaf (imports only ``errors``), kept apart from the schema in ``spec`` so that each stays small.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ManifestError

# Bounds on a manifest document, checked before it is built into Python objects: a real one is
# a few KiB, about 6 levels deep and a few hundred values.
MAX_MANIFEST_CHARS = 1 << 20
MAX_MANIFEST_DEPTH = 32
MAX_MANIFEST_NODES = 20_000

# Values that look like credentials are refused anywhere in a manifest: secrets go by reference.
_CREDENTIAL_RES = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def credential_problems(node: Any, path: str) -> list[tuple[str, str]]:
    """(path, what to do) for every string anywhere in ``node`` that looks like a credential."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in credential_problems(v, f"{path}.{k}".lstrip("."))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in credential_problems(v, f"{path}.{i}")]
    if isinstance(node, str) and any(r.search(node) for r in _CREDENTIAL_RES):
        return [(path, "looks like a credential; never put secrets in a manifest - use "
                       "spec.kubernetes.credentials_secret or the environment / AWS profile chain")]
    return []


def load_bounded_yaml(text: str, source: str) -> Any:
    """The Python objects of YAML (or JSON) text whose size, depth and node count are within bounds."""
    if len(text) > MAX_MANIFEST_CHARS:
        raise ManifestError([(source, f"{len(text)} characters is above the limit of {MAX_MANIFEST_CHARS}; "
                                      "a manifest is a few KiB - remove what does not belong in it")])
    try:
        _check_shape(text, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError([(source, f"not valid YAML ({exc}); fix the syntax")]) from None


def _check_shape(text: str, source: str) -> None:
    """Walk PyYAML's event stream (an iterative parser, safe at any depth) and refuse a document
    too deep or with too many nodes. An alias counts as the whole node it repeats, so an alias
    bomb is refused instead of expanded."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) of the node it names
    open_: list[list[Any]] = []  # collections being read: [anchor, node count at start, tallest child]
    nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_.append([event.anchor, nodes, 0])
            nodes += 1
            _within_limits(len(open_), nodes, source)
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, start, tallest = open_.pop()
            size, height = nodes - start, tallest + 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, (size, height) = None, anchors.get(event.anchor, (1, 0))
            nodes += size
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size, height, nodes = event.anchor, 1, 0, nodes + 1
        else:
            continue
        if anchor:
            anchors[anchor] = (size, height)
        if open_:
            open_[-1][2] = max(open_[-1][2], height)
        _within_limits(len(open_) + height, nodes, source)


def _within_limits(depth: int, nodes: int, source: str) -> None:
    if depth > MAX_MANIFEST_DEPTH:
        raise ManifestError([(source, f"nested deeper than the limit of {MAX_MANIFEST_DEPTH} levels; "
                                      "a PretrainJob needs a handful - flatten the document")])
    if nodes > MAX_MANIFEST_NODES:
        raise ManifestError([(source, f"more than the limit of {MAX_MANIFEST_NODES} values (aliases count as "
                                      "what they repeat); remove what does not belong in a manifest")])


def read_manifest_text(path: str | Path) -> str:
    """A manifest file's text; a missing, unreadable, huge or non-UTF-8 file is a ManifestError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError([(str(p), "file not found; pass the path of a PretrainJob YAML file")])
    try:
        if p.stat().st_size > 4 * MAX_MANIFEST_CHARS:  # UTF-8 needs at most 4 bytes a character
            raise ManifestError([(str(p), f"larger than the limit of {MAX_MANIFEST_CHARS} characters; "
                                          "pass a PretrainJob YAML file")])
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError([(str(p), f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                      "save the manifest as UTF-8")]) from None
    except OSError as exc:
        raise ManifestError([(str(p), f"cannot read it ({exc.strerror}); check its permissions")]) from None
