"""The simulated spot cluster's config file, and the Ray autoscaler config rendered from it.

A small YAML file (``bertctl spot up --config FILE``; ``orchestrator/spot/examples/sim-cluster.yaml`` is an example)::

    head:                       # the on-demand head: never preempted
      resources: {CPU: 2}
    provisioning_delay_s: 5     # a new node joins this long after the autoscaler asks for it
    idle_timeout_s: 60          # an idle worker node is released after this long
    node_types:
      spot-cpu:                 # a worker group, as in a KubeRay RayCluster
        resources: {CPU: 2, memory: 2000000000, spot_node: 1}
        labels: {zone: sim-a}
        min_workers: 0
        max_workers: 4

Every worker node carries Ray's node labels the way a KubeRay worker group's pods do:
``ray.io/node-group: <type>`` and ``ray.io/market-type: spot`` (the head: ``on-demand``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import PermanentError

NODE_GROUP_LABEL = "ray.io/node-group"
MARKET_TYPE_LABEL = "ray.io/market-type"
HEAD_TYPE = "ray.head.default"
PROVIDER_MODULE = "orchestrator.spot.provider.SpotNodeProvider"
_RESERVED = {"object_store_memory"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HeadSpec(_Strict):
    resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 2.0},
                                        description="Logical resources of the head (CPU, memory, custom).")

    @field_validator("resources")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_resources(value)


class NodeTypeSpec(_Strict):
    resources: dict[str, float] = Field(description="Logical resources of one node: CPU, GPU, memory "
                                                    "(bytes) and any custom resource.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra Ray node labels.")
    min_workers: int = Field(0, ge=0, description="Nodes the autoscaler keeps even without demand.")
    max_workers: int = Field(4, ge=1, description="Most nodes of this type (the pool's size).")
    object_store_mb: int = Field(128, ge=80, description="Object store of one node; small, since every "
                                                         "simulated node shares this machine's /dev/shm.")

    @field_validator("resources")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_resources(value)


class SimClusterConfig(_Strict):
    head: HeadSpec = Field(default_factory=HeadSpec)
    node_types: dict[str, NodeTypeSpec] = Field(min_length=1, description="Worker groups by name.")
    provisioning_delay_s: float = Field(0.0, ge=0, description="Seconds from launch request to join.")
    idle_timeout_s: float = Field(60.0, gt=0, description="Idle worker nodes are released after this.")
    update_interval_s: float = Field(1.0, gt=0, description="How often the autoscaler looks at demand.")
    health_check_period_s: float = Field(1.0, gt=0, description="How often Ray's GCS checks each raylet; a "
                                         "node killed without notice is declared dead after "
                                         "health_check_failures missed checks.")
    health_check_failures: int = Field(3, ge=1, description="Missed health checks before a node is dead.")

    @field_validator("node_types")
    @classmethod
    def _names(cls, value: dict[str, NodeTypeSpec]) -> dict[str, NodeTypeSpec]:
        if HEAD_TYPE in value:
            raise ValueError(f"{HEAD_TYPE!r} is the head's type; name the worker group something else")
        return value

    def max_workers(self) -> int:
        return sum(t.max_workers for t in self.node_types.values())


def _check_resources(value: dict[str, float]) -> dict[str, float]:
    bad = [k for k, v in value.items() if v < 0 or k in _RESERVED]
    if bad:
        raise ValueError(f"resources {bad} must be >= 0 and not one of {sorted(_RESERVED)}")
    return value


def load_config(path: str | Path) -> SimClusterConfig:
    """Parse and validate a cluster config file; errors name the field and the fix."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PermanentError(f"cannot read the spot cluster config {path}: {exc}") from exc
    return parse_config(raw or {}, str(path))


def parse_config(raw: dict[str, Any], source: str = "config") -> SimClusterConfig:
    try:
        return SimClusterConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PermanentError(f"invalid spot cluster config {source}: {problems}") from None


def autoscaler_config(cfg: SimClusterConfig, gcs_address: str, state_dir: Path) -> dict[str, Any]:
    """The cluster config Ray's autoscaler reads (``ray start --autoscaling-config``).

    The provider is ``SpotNodeProvider`` (a ``FakeMultiNodeProvider`` with the spot pool's delay,
    capacity and removals), loaded as an external provider; every field Ray's config schema
    expects is present because ``ray start`` does not fill defaults for a provider like this one.
    """
    types: dict[str, Any] = {HEAD_TYPE: {"resources": dict(cfg.head.resources), "node_config": {},
                                         "max_workers": 0}}
    for name, spec in cfg.node_types.items():
        labels = {NODE_GROUP_LABEL: name, MARKET_TYPE_LABEL: "spot", **spec.labels}
        resources = {**spec.resources, "object_store_memory": spec.object_store_mb * 1024 * 1024}
        types[name] = {"resources": resources, "labels": labels, "node_config": {},
                       "min_workers": spec.min_workers, "max_workers": spec.max_workers}
    provider = {"type": "external", "module": PROVIDER_MODULE, "gcs_address": gcs_address,
                "launch_multiple": True, "use_node_id_as_ip": True, "disable_node_updaters": True,
                "disable_launch_config_check": True, "state_dir": str(state_dir),
                "provisioning_delay_s": cfg.provisioning_delay_s}
    empty_lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                   "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
                   "rsync_exclude", "rsync_filter")
    return {"cluster_name": f"bertctl-spot-{state_dir.name}", "max_workers": cfg.max_workers(),
            "provider": provider, "available_node_types": types, "head_node_type": HEAD_TYPE,
            "auth": {}, "docker": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": cfg.idle_timeout_s / 60.0,
            "file_mounts": {}, "file_mounts_sync_continuously": False, **{k: [] for k in empty_lists}}
