"""The PretrainJob manifest: its schema, its defaults and every consistency rule.

A leaf module (imports only ``errors``): the manager, the trainer and the CLI all read
manifests through it. Structural problems come from pydantic; cross-field problems from
``consistency_problems``. Both are reported together as (field path, what to do) pairs so
``bertctl validate`` can print every problem at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator
from typing_extensions import TypedDict  # pydantic needs this one, not typing's, before Python 3.12

from orchestrator.errors import ManifestError
from orchestrator.spec_evaluation import EvaluationSpec
from orchestrator.manifest_text import (  # noqa: F401  (the limits and the reader are part of spec's API)
    MAX_MANIFEST_CHARS, MAX_MANIFEST_DEPTH, MAX_MANIFEST_NODES, credential_problems, load_bounded_yaml,
    read_manifest_text,
)

API_VERSION = "bertctl/v1"
KIND = "PretrainJob"
DEFAULT_VOCAB_SIZE = 8000  # trained when a manifest or `bertctl prepare` names no vocabulary
# Preset sizes (layers, hidden, heads) follow the compact BERT family of Turc et al. (2019)
# and the original BERT-base/large. Values are BertConfig fields.
PRESETS: dict[str, dict[str, int]] = {
    "bert-tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2},
    "bert-mini": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4},
    "bert-small": {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8},
    "bert-medium": {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8},
    "bert-base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12},
    "bert-large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16},
}
# transformers' ACT2FN names, written out because the manager must not import transformers
# (tests/test_spec.py checks each is still one).
HIDDEN_ACTS = (
    "gelu", "gelu_10", "gelu_accurate", "gelu_fast", "gelu_new", "gelu_python", "gelu_python_tanh",
    "gelu_pytorch_tanh", "hardswish", "laplace", "leaky_relu", "linear", "mish", "prelu", "quick_gelu",
    "relu", "relu2", "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh", "xielu",
)
MAX_MODEL_DIM = 1 << 20  # far above any buildable BERT; keeps sizes inside int64 everywhere
# Strict: YAML `true` or "512" is a mistake here, not a size.
_Size = Annotated[int, Strict(), Field(ge=1, le=MAX_MODEL_DIM)]
_Prob = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
_Positive = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]


class BertOverrides(TypedDict, total=False):
    """The BertConfig fields a manifest may override, typed and ranged so the model always builds."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    num_hidden_layers: _Size
    hidden_size: _Size
    num_attention_heads: _Size
    intermediate_size: _Size
    max_position_embeddings: _Size
    hidden_dropout_prob: _Prob
    attention_probs_dropout_prob: _Prob
    hidden_act: Literal[HIDDEN_ACTS]  # type: ignore[valid-type]
    # Shards always hold sentence pairs, so token types 0 and 1 both occur.
    type_vocab_size: Annotated[int, Strict(), Field(ge=2, le=MAX_MODEL_DIM)]
    layer_norm_eps: _Positive
    initializer_range: _Positive


OVERRIDABLE = frozenset(BertOverrides.__annotations__)
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
class _Strict(BaseModel):
    # No inf / NaN: a stored job is JSON, which has neither.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Metadata(_Strict):
    name: str = Field(description="Job name: RFC 1123 label (lowercase, digits, '-'), at most 63 chars.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")

    @field_validator("name")
    @classmethod
    def _rfc1123(cls, v: str) -> str:
        if len(v) > 63 or not _NAME_RE.match(v):
            raise ValueError("must be an RFC 1123 label: at most 63 lowercase letters, digits or '-', "
                             "starting and ending with a letter or digit (e.g. 'bert-tiny-run1')")
        return v


class ModelSpec(_Strict):
    preset: Literal[tuple(PRESETS)] = "bert-tiny"  # type: ignore[valid-type]  (the names are PRESETS' keys)
    overrides: BertOverrides = Field(default_factory=dict,  # type: ignore[arg-type]
                                     description="BertConfig fields that replace the preset's.")

    def bert_config(self, vocab_size: int) -> dict[str, Any]:
        """The resolved BertConfig fields: preset, derived sizes, then overrides."""
        cfg: dict[str, Any] = dict(PRESETS[self.preset])
        cfg.update({"intermediate_size": 4 * cfg["hidden_size"], "max_position_embeddings": 512})
        cfg.update(self.overrides)
        cfg["vocab_size"] = vocab_size
        return cfg


class TokenizerSpec(_Strict):
    vocab: str | None = Field(None, description="A WordPiece vocab.txt (local or s3://) to use as is.")
    vocab_size: int | None = Field(None, ge=100, le=1_000_000, description="Train a vocabulary of this size.")
    lowercase: bool = True


class PrepareSpec(_Strict):
    inputs: list[str] = Field(min_length=1, description="Text, JSONL or Parquet files or directories (local or s3://).")
    text_column: str = Field("text", description="Field holding the text in JSONL / Parquet inputs.")
    shard_bytes: int = Field(128 * 2**20, ge=2**16, description="Target shard size in bytes.")


class DataSpec(_Strict):
    shards: str = Field(description="URI of the prepared shards (the directory holding index.json).")
    seq_len: int = Field(128, ge=8, le=8192)
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    whole_word_masking: bool = False
    nsp: bool = True
    seed: int = Field(1234, ge=0)
    shuffle_window: int = Field(10_000, ge=1, description="Rows shuffled together after the shard order.")
    prefetch_bytes: int = Field(256 * 2**20, ge=2**20, description="Upper bound of bytes read ahead.")
    prepare: PrepareSpec | None = Field(None, description="Prepare the shards first when index.json is missing.")


class TrainingSpec(_Strict):
    max_steps: int = Field(ge=1)
    global_batch_size: int = Field(ge=1, description="Sequences per optimizer step, constant across world sizes.")
    micro_batch_size: int = Field(ge=1, description="Sequences per forward pass on one worker.")
    optimizer: Literal["adamw", "lamb"] = "adamw"
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-6, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_clipping: float = Field(1.0, ge=0.0, description="Max global grad norm; 0 disables.")
    log_every_steps: int = Field(1, ge=1)
    compile: bool = Field(False, description="Run the BERT encoder through torch.compile (static shapes); "
                                             "the first step pays the compilation.")
    unpad: bool = Field(False, description="Pack each micro-batch's real tokens into one sequence so the encoder "
                                           "does no work on padding (variable-length attention); needs "
                                           "model.overrides.attention_probs_dropout_prob: 0.")


class DeepSpeedSpec(_Strict):
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: Literal["none", "cpu"] = "none"
    offload_param: Literal["none", "cpu"] = "none"
    config: dict[str, Any] = Field(default_factory=dict, description="Raw DeepSpeed config merged last.")


class WorkerRange(_Strict):
    min: int = Field(ge=1)
    max: int = Field(ge=1)


class ResourcesSpec(_Strict):
    workers: Union[int, WorkerRange] = Field(1, description="A count, or {min, max} for an elastic run.")
    gpus_per_worker: int = Field(0, ge=0, le=16)
    cpus_per_worker: float = Field(1, gt=0)
    memory_per_worker: str = Field("4Gi", description="Kubernetes quantity, e.g. 16Gi.")

    @field_validator("workers")
    @classmethod
    def _positive(cls, v: Union[int, WorkerRange]) -> Union[int, WorkerRange]:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1 (or {min, max} for an elastic run)")
        return v

    @field_validator("memory_per_worker")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY_RE.match(v):
            raise ValueError("must be a Kubernetes quantity such as '16Gi' or '512Mi'")
        return v

    def worker_counts(self) -> range:
        if isinstance(self.workers, int):
            return range(self.workers, self.workers + 1)
        return range(self.workers.min, self.workers.max + 1)

    def workers_cpus(self) -> float:
        """Logical CPUs the workers ask Ray for at their largest count."""
        return max(self.worker_counts()) * self.cpus_per_worker


class CheckpointSpec(_Strict):
    uri: str = Field(description="Where checkpoints go (local path or s3://).")
    every_steps: Union[int, Literal["auto"]] = Field(100, description="Interval in steps, or 'auto' (Young-Daly).")
    keep_last: int = Field(3, ge=1, description="Committed checkpoints kept; the newest is never deleted.")
    preemption_deadline_s: float = Field(25.0, gt=0, le=3600)
    async_upload: bool = False

    @field_validator("every_steps")
    @classmethod
    def _positive(cls, v: Union[int, str]) -> Union[int, str]:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1, or 'auto'")
        return v


class RecoverySpec(_Strict):
    max_restarts: int = Field(10, ge=0)
    backoff_s: float = Field(5.0, ge=0)
    max_backoff_s: float = Field(300.0, ge=0)
    heartbeat_timeout_s: float = Field(300.0, gt=0, description="An attempt silent this long is killed and retried.")
    startup_timeout_s: float = Field(
        1800.0, gt=0, description="Until its first training heartbeat an attempt has this long, from its start, to "
        "begin training (node scale-up, image pull, Ray start, checkpoint load); heartbeat_timeout_s applies after.")


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubernetesSpec(_Strict):
    image: str = Field("bertctl/trainer:latest", description="Trainer image (bertctl + torch + DeepSpeed).")
    namespace: str = "bertctl"
    service_account: str | None = Field(None, description="For IRSA / Workload Identity object-store access.")
    credentials_secret: str | None = Field(None, description="Secret whose keys become env vars (by reference).")
    head_node_selector: dict[str, str] = Field(default_factory=dict)
    worker_node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    spot: bool = Field(True, description="Schedule workers on spot / preemptible nodes.")
    priority_class: str | None = None
    queue: str | None = Field(None, description="Kueue LocalQueue name.")
    ttl_seconds_after_finished: int = Field(600, ge=0)


class JobSpec(_Strict):
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=lambda: TokenizerSpec(vocab_size=DEFAULT_VOCAB_SIZE))
    data: DataSpec
    training: TrainingSpec
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    checkpoint: CheckpointSpec
    recovery: RecoverySpec = Field(default_factory=RecoverySpec)
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    evaluation: EvaluationSpec | None = Field(None, description="Downstream tasks the manager fine-tunes "
                                              "committed checkpoints on, beside training (spec_evaluation.py).")


class PretrainJob(_Strict):
    api_version: Literal[API_VERSION] = Field(alias="apiVersion")  # type: ignore[valid-type]
    kind: Literal[KIND]  # type: ignore[valid-type]
    metadata: Metadata
    spec: JobSpec

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def with_absolute_paths(self) -> "PretrainJob":
        """Local data and checkpoint paths made absolute (a URI with a scheme is kept as it is):
        the stored job means the same whatever directory its trainer or Ray workers start in."""
        doc = self.to_dict()
        for section, key in (("data", "shards"), ("checkpoint", "uri")):
            uri = doc["spec"][section][key]
            if "://" not in uri:
                doc["spec"][section][key] = str(Path(uri).resolve())
        if self.spec.evaluation is not None:
            doc["spec"]["evaluation"] = self.spec.evaluation.with_absolute_paths().model_dump(mode="json")
        return parse_manifest(doc)


from orchestrator.spec_rules import consistency_problems  # noqa: E402  (rules read the models above)


def _path(loc: tuple[Any, ...]) -> str:
    # Union members and validators appear in pydantic's locations; they are not fields.
    parts = [str(p) for p in loc if str(p) != "int" and not str(p).startswith(("function-", "WorkerRange", "literal["))]
    return ".".join(parts) or "<root>"


def _fix(err: dict[str, Any]) -> str:
    kind, msg, loc = err["type"], err["msg"], err["loc"]
    if kind == "extra_forbidden" and loc[:3] == ("spec", "model", "overrides"):
        return f"not an overridable BertConfig field; valid: {sorted(OVERRIDABLE)}"
    if kind == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if kind == "missing":
        return "required field is missing; add it"
    return msg.removeprefix("Value error, ")


def parse_manifest(data: Any) -> PretrainJob:
    """Validate a manifest (already loaded into Python objects); raise ManifestError listing all problems."""
    if not isinstance(data, dict):
        raise ManifestError([("<root>", "a manifest is a mapping with apiVersion, kind, metadata and spec")])
    problems = credential_problems(data, "")
    try:
        job = PretrainJob.model_validate(data)
    except ValidationError as exc:
        problems += _dedupe([(_path(e["loc"]), _fix(e)) for e in exc.errors()])
        raise ManifestError(problems) from None
    problems += consistency_problems(job)
    if problems:
        raise ManifestError(problems)
    return job


def _dedupe(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(items))


def load_manifest_text(text: str, source: str = "<manifest>") -> PretrainJob:
    """Parse and validate YAML (or JSON) text, its size, depth and node count bounded first."""
    return parse_manifest(load_bounded_yaml(text, source))


def load_manifest(path: str | Path) -> PretrainJob:
    return load_manifest_text(read_manifest_text(path), str(Path(path)))
