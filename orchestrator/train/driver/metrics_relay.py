"""The metrics file of an attempt: one JSON line per reported step (rank 0's metrics plus every
rank's sample ids). Ray Train's reports reach it through ``launch.MetricsFile`` on the controller;
a group re-formed in place reaches it through ``MetricsRelay``, an actor on the driver's node."""

from __future__ import annotations

import json


def append_rows(path: str, per_rank: list[list[dict]]) -> None:
    """Rank 0's rows, each with the sample ids of every rank for that step (rank order)."""
    lines = []
    for i, row in enumerate(per_rank[0] if per_rank else []):
        merged = dict(row)
        merged["sample_ids"] = [s for rows in per_rank if i < len(rows) for s in rows[i].get("sample_ids", [])]
        lines.append(json.dumps(merged) + "\n")
    if lines:
        with open(path, "a") as f:
            f.writelines(lines)


class MetricsRelay:
    """An actor on the driver's node that writes an in-place group's rows to the metrics file:
    that group never calls ``ray.train.report``, whose barrier waits for the workers that left
    (worker/regroup.py)."""

    def __init__(self, path: str | None):
        self.path = path

    def append(self, per_rank: list[list[dict]]) -> None:
        if self.path:
            append_rows(self.path, per_rank)
