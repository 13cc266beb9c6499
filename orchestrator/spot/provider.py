"""The node provider of the simulated spot cluster, loaded by Ray's autoscaler (monitor process).

Ray's ``FakeMultiNodeProvider`` starts every "node" as a real raylet on this machine. A spot
pool adds three things a cloud has and it lacks, all configured in ``provider:`` of the cluster
config (``config.py`` writes it):

- ``provisioning_delay_s``: a requested node joins only after this delay (a GPU instance takes
  minutes); the autoscaler meanwhile counts it as pending, as it would a cloud launch.
- ``state_dir``/``capacity.json``: how many nodes of each type the pool can hold right now. The
  chaos driver lowers it when it takes a node and raises it when capacity returns; a launch
  beyond it is fulfilled in part, as a spot fleet's, and the rest fails like a cloud's
  "insufficient capacity" (the autoscaler retries it later).
- a node whose raylet died (the chaos driver killed the instance) is no longer listed: the
  cloud removed it, so the autoscaler sees the loss and may launch a replacement.

Every launch and removal is appended to ``state_dir``/``events.jsonl`` for tests and benches
(``pool.py`` reads and writes both files).

Each node also gets its own ``TORCH_EXTENSIONS_DIR`` (``state_dir``/``nodes/<n>/torch_extensions``),
holding a copy of the ops this machine has already built, as a node's image would. DeepSpeed loads
its CPU comm op through torch's JIT loader, which holds a lock file in that directory; shared by
every simulated node, a lock left by a node killed in that second blocked every later DeepSpeed
start on the machine. A killed node now takes only its own directory down, as a real one takes its disk.

The spot nodes start no log monitor of their own. Every simulated node writes its workers' logs into
the one session directory of this machine, and Ray's log monitor forwards every file there to the
drivers: one monitor per node printed each worker line once per node, and a node that joined later
printed every earlier line again. The head's monitor alone forwards each line once, as on a cluster
where each node's monitor sees only its own disk.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

from orchestrator.spot.pool import append_event, read_capacity

log = logging.getLogger(__name__)
_RAYLET = "raylet"


class InsufficientCapacity(RuntimeError):
    """The spot pool has no room for another node of this type (the autoscaler retries later)."""


class SpotNodeProvider(FakeMultiNodeProvider):
    def __init__(self, provider_config: dict[str, Any], cluster_name: str):
        super().__init__(provider_config, cluster_name)
        self._state_dir = Path(provider_config["state_dir"])
        self._delay_s = float(provider_config.get("provisioning_delay_s", 0.0))
        self._provisioning: dict[str, int] = {}  # node type -> launches accepted, not yet joined
        self._launches = itertools.count()

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        node_type = tags[TAG_RAY_USER_NODE_TYPE]
        count = self._reserve(node_type, count)
        pending = count
        try:
            # Outside the lock: the autoscaler launches on its own threads and keeps listing nodes.
            time.sleep(self._delay_s)
            for _ in range(count):
                with self.lock, _environ(TORCH_EXTENSIONS_DIR=self._node_extensions()), _no_log_monitor():
                    # re-entrant: the fake provider takes the lock too; ids are read in the same hold
                    before = set(self._nodes)
                    self._create_node_with_resources_and_labels(node_config, tags, 1, resources, labels)
                    joined = sorted(set(self._nodes) - before)
                    self._provisioning[node_type] -= 1  # now counted as a node of the type
                    pending -= 1
                append_event(self._state_dir, "joined", node_type=node_type, node_id=joined[0] if joined else "")
        finally:
            with self.lock:
                self._provisioning[node_type] -= pending

    def _node_extensions(self) -> str | None:
        """A new node's own torch extensions directory, seeded with the machine's built ops (no lock files).
        None (share the machine's) while nothing is built yet: a node compiling alone costs a minute."""
        built = _built_ops()
        if not built:
            return None
        own = self._state_dir / "nodes" / str(next(self._launches)) / "torch_extensions"
        try:
            for op in built:  # torch looks for <TORCH_EXTENSIONS_DIR>/<op name>/ when the variable is set
                shutil.copytree(op, own / op.name, ignore=shutil.ignore_patterns("lock"), dirs_exist_ok=True)
        except OSError as exc:  # a full disk, an op rebuilt meanwhile: the node shares the machine's, as before
            log.warning("could not give the new node its own torch extensions (%s); it shares this machine's", exc)
            return None
        return str(own)

    def _reserve(self, node_type: str, count: int) -> int:
        """How many of ``count`` launches the pool has room for now, reserved. Like a spot fleet, a
        request larger than the room is fulfilled in part: all or nothing, a group that asks for
        max workers while the pool holds fewer would never get a node back."""
        with self.lock:
            limit = read_capacity(self._state_dir).get(node_type)
            held = self._count(node_type) + self._provisioning.get(node_type, 0)
            room = count if limit is None else max(0, min(count, limit - held))
            if room < count:
                append_event(self._state_dir, "no_capacity", node_type=node_type, wanted=count, granted=room,
                             limit=limit)
            if room == 0:
                raise InsufficientCapacity(f"spot pool {node_type!r} holds {limit} node(s), {held} taken")
            self._provisioning[node_type] = self._provisioning.get(node_type, 0) + room
            append_event(self._state_dir, "requested", node_type=node_type, count=room, delay_s=self._delay_s)
            return room

    def _count(self, node_type: str) -> int:
        return sum(1 for n in self._nodes.values() if n["tags"].get(TAG_RAY_USER_NODE_TYPE) == node_type
                   and n["tags"].get(TAG_RAY_NODE_KIND) == NODE_KIND_WORKER)

    def non_terminated_nodes(self, tag_filters):
        self._reap_taken_nodes()
        return super().non_terminated_nodes(tag_filters)

    def _reap_taken_nodes(self) -> None:
        """Forget nodes whose raylet is gone (taken by the chaos driver); stop what is left of them."""
        with self.lock:
            taken = [nid for nid, n in self._nodes.items() if "node" in n and _raylet_dead(n["node"])]
            for node_id in taken:
                entry = self._nodes.pop(node_id)
                entry["node"].kill_all_processes(check_alive=False, allow_graceful=False)
                append_event(self._state_dir, "removed", node_type=entry["tags"].get(TAG_RAY_USER_NODE_TYPE),
                             node_id=node_id)

    def terminate_node(self, node_id):
        node_type = self._nodes.get(node_id, {}).get("tags", {}).get(TAG_RAY_USER_NODE_TYPE)
        super().terminate_node(node_id)
        append_event(self._state_dir, "terminated", node_type=node_type, node_id=node_id)


def _built_ops() -> list[Path]:
    """Directories of the ops torch has built for this machine's Python (where its JIT loader looks:
    ``$TORCH_EXTENSIONS_DIR/<op>`` or ``~/.cache/torch_extensions/py<major><minor>_<cpu|cuda>/<op>``)."""
    given = os.environ.get("TORCH_EXTENSIONS_DIR")
    roots = [Path(given)] if given else sorted(
        (Path.home() / ".cache" / "torch_extensions").glob(f"py{sys.version_info[0]}{sys.version_info[1]}_*"))
    return sorted({so.parent for root in roots for so in root.glob("*/*.so")})


@contextlib.contextmanager
def _environ(**values: str | None):
    """``values`` set in this process's environment (None: left as is) while a node's processes start:
    the raylet inherits them, and its workers inherit the raylet's."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _no_log_monitor():
    """Nodes started meanwhile run no log monitor (see the module doc). Ray's fake provider builds
    each node's parameters itself; this only changes the default of that one field."""
    import ray._private.parameter as parameter

    original = parameter.RayParams

    class NodeParams(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("include_log_monitor", False)
            super().__init__(*args, **kwargs)

    parameter.RayParams = NodeParams
    try:
        yield
    finally:
        parameter.RayParams = original


def _raylet_dead(node) -> bool:
    for info in node.all_processes.get(_RAYLET, []):
        if info.process.poll() is not None:
            return True
    return False
