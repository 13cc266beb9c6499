"""The spot pool's shared state files, read and written without Ray.

``capacity.json`` holds how many nodes each worker group's pool can hold now (the provider in
Ray's autoscaler reads it at every launch; the chaos driver writes it); ``events.jsonl`` records
every launch, join, refusal, notice and removal. Kept apart from ``provider.py`` so that a
process can use them before it has set up its environment for Ray (Ray reads its auth settings
when it is first imported).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

CAPACITY_FILE = "capacity.json"
EVENTS_FILE = "events.jsonl"


def read_capacity(state_dir: Path) -> dict[str, int]:
    """Nodes each type may hold now; a type not named is limited only by its max_workers."""
    try:
        raw = json.loads((state_dir / CAPACITY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def write_capacity(state_dir: Path, capacity: dict[str, int]) -> None:
    tmp = state_dir / (CAPACITY_FILE + ".tmp")
    tmp.write_text(json.dumps(capacity, sort_keys=True))
    os.replace(tmp, state_dir / CAPACITY_FILE)  # the provider never reads half a file


def append_event(state_dir: Path, kind: str, **fields: Any) -> None:
    line = json.dumps({"ts": time.time(), "kind": kind, **fields}) + "\n"
    with open(state_dir / EVENTS_FILE, "a") as fh:
        fh.write(line)
