"""Cross-field rules of a PretrainJob: values that are each valid but do not fit together.

Each rule returns (field path, what to do) pairs; ``consistency_problems`` runs them all so a
user sees every problem in one go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from orchestrator.errors import ManifestError

if TYPE_CHECKING:
    from orchestrator.spec import PretrainJob

Problems = list[tuple[str, str]]
MIN_NSP_SEQ_LEN = 16


def valid_worker_counts(global_batch: int, micro_batch: int, candidates: range) -> list[int]:
    """Worker counts that keep the global batch: global = micro x workers x grad_accum."""
    return [w for w in candidates if global_batch % (micro_batch * w) == 0]


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """The batch rule, the one place it is written: grad_accum = global / (micro x world).

    The global batch never changes with the world size, so a world size that does not divide it
    is a manifest error naming the world sizes that work.
    """
    if not valid_worker_counts(global_batch, micro_batch, range(world_size, world_size + 1)):
        good = valid_worker_counts(global_batch, micro_batch, range(1, global_batch + 1))
        raise ManifestError([("spec.training.global_batch_size",
                              f"{global_batch} is not divisible by micro_batch_size {micro_batch} x "
                              f"world_size {world_size}; world sizes that work: {good}; pick one of them "
                              "or change the batch sizes")])
    return global_batch // (micro_batch * world_size)


def usable_worker_count(global_batch: int, micro_batch: int, lowest: int, available: int) -> int | None:
    """The largest worker count from ``lowest`` to ``available`` that keeps the global batch (None:
    none does). An elastic group runs at such a count only: with room for 3 workers and a batch that
    1, 2 and 4 divide, it forms 2 and leaves the third node to a grow."""
    counts = valid_worker_counts(global_batch, micro_batch, range(lowest, available + 1))
    return max(counts) if counts else None


def _batch(job: "PretrainJob") -> Problems:
    """A fixed count must keep the global batch; an elastic range must at its ``min`` and ``max``
    (the counts between that do not are skipped: the group runs at the largest one that does)."""
    t, r = job.spec.training, job.spec.resources
    counts = r.worker_counts()
    if not counts:
        return []  # min above max: _workers_range says so
    ends = sorted({counts[0], counts[-1]})
    good = valid_worker_counts(t.global_batch_size, t.micro_batch_size, counts)
    bad = [w for w in ends if w not in good]
    if not bad:
        return []
    hint = f"worker counts that work: {good}" if good else "no worker count in the range works"
    return [("spec.training.global_batch_size",
             f"{t.global_batch_size} is not divisible by micro_batch_size ({t.micro_batch_size}) x workers "
             f"for workers={bad}; {hint}; change global_batch_size, micro_batch_size or resources.workers")]


def _workers_range(job: "PretrainJob") -> Problems:
    w = job.spec.resources.workers
    if not isinstance(w, int) and w.min > w.max:
        return [("spec.resources.workers", f"min ({w.min}) is above max ({w.max}); swap them")]
    return []


def _precision(job: "PretrainJob") -> Problems:
    t, r = job.spec.training, job.spec.resources
    if t.precision != "fp32" and r.gpus_per_worker == 0:
        return [("spec.training.precision", f"{t.precision} needs GPUs; set resources.gpus_per_worker >= 1 "
                                            "or use precision: fp32 on CPU")]
    return []


def _optimizer(job: "PretrainJob") -> Problems:
    if job.spec.training.optimizer != "lamb":
        return []
    out = []
    if job.spec.resources.gpus_per_worker == 0:
        out.append(("spec.training.optimizer", "lamb is DeepSpeed's fused CUDA optimizer and needs GPUs; "
                                               "use adamw on CPU or set resources.gpus_per_worker >= 1"))
    if job.spec.training.precision == "bf16":
        out.append(("spec.training.precision", "DeepSpeed's fused LAMB kernel has no bf16 version; use fp16 "
                                               "or fp32 with lamb, or adamw with bf16"))
    if job.spec.deepspeed.zero_stage > 0:
        # ZeRO hands the optimizer flattened partitions, so LAMB's per-layer trust ratio would be
        # computed over arbitrary slices of many layers: it would train, but not as LAMB.
        out.append(("spec.deepspeed.zero_stage", "lamb needs zero_stage: 0 (ZeRO flattens parameters, which "
                                                 "breaks LAMB's per-layer trust ratio); use adamw with ZeRO"))
    return out


def _positions(job: "PretrainJob") -> Problems:
    cfg = job.spec.model.bert_config(vocab_size=1)
    seq_len, positions = job.spec.data.seq_len, cfg["max_position_embeddings"]
    if seq_len > positions:
        return [("spec.data.seq_len", f"{seq_len} exceeds the model's max_position_embeddings ({positions}); "
                                      "lower seq_len or raise model.overrides.max_position_embeddings")]
    return []


def _heads(job: "PretrainJob") -> Problems:
    cfg = job.spec.model.bert_config(vocab_size=1)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if hidden % heads:
        # Named by whichever of the two the manifest overrides (the preset's own always divide).
        field = "num_attention_heads" if "num_attention_heads" in job.spec.model.overrides else "hidden_size"
        return [(f"spec.model.overrides.{field}",
                 f"hidden_size ({hidden}) must be divisible by num_attention_heads ({heads}); "
                 f"set num_attention_heads to a divisor of {hidden} or hidden_size to a multiple of {heads}")]
    return []


def _nsp(job: "PretrainJob") -> Problems:
    d = job.spec.data
    if d.nsp and d.seq_len < MIN_NSP_SEQ_LEN:
        return [("spec.data.seq_len", f"NSP pairs need seq_len >= {MIN_NSP_SEQ_LEN}; raise it or set data.nsp: false")]
    return []


def _tokenizer(job: "PretrainJob") -> Problems:
    t = job.spec.tokenizer
    if (t.vocab is None) == (t.vocab_size is None):
        return [("spec.tokenizer", "give exactly one of vocab (a vocab.txt to use) or vocab_size (train one)")]
    return []


def _warmup(job: "PretrainJob") -> Problems:
    t = job.spec.training
    if t.warmup_steps > t.max_steps:
        return [("spec.training.warmup_steps", f"{t.warmup_steps} exceeds max_steps ({t.max_steps}); lower it")]
    return []


def _offload(job: "PretrainJob") -> Problems:
    ds = job.spec.deepspeed
    out = []
    if ds.offload_param != "none" and ds.zero_stage != 3:
        out.append(("spec.deepspeed.offload_param", "parameter offload needs zero_stage: 3"))
    if ds.offload_optimizer != "none" and ds.zero_stage == 0:
        out.append(("spec.deepspeed.offload_optimizer", "optimizer offload needs zero_stage >= 1"))
    return out


def _compile(job: "PretrainJob") -> Problems:
    if job.spec.training.compile and job.spec.deepspeed.zero_stage == 3:
        # ZeRO-3 gathers each layer's parameters in forward hooks that DeepSpeed keeps out of
        # torch.compile (torch.compiler.disable): the encoder breaks into per-layer graphs and
        # recompiles dozens of times (bench/gpu.py --tiny --zero-stage 3: 7 breaks, 32 recompiles),
        # so the switch would cost time instead of saving it.
        return [("spec.training.compile", "torch.compile of the encoder needs zero_stage <= 2 (ZeRO-3's "
                                          "parameter hooks break its graph at every layer); lower "
                                          "deepspeed.zero_stage or set compile: false")]
    return []


def _unpad(job: "PretrainJob") -> Problems:
    if not job.spec.training.unpad or job.spec.model.overrides.get("attention_probs_dropout_prob") == 0:
        return []
    # The variable-length attention kernel has no dropout on the attention probabilities (MosaicBERT
    # and ModernBERT train with it off); leaving it on would silently change the model trained.
    return [("spec.training.unpad", "the variable-length attention kernel has no attention dropout: set "
                                    "model.overrides.attention_probs_dropout_prob: 0.0, or unpad: false")]


def _deepspeed_overrides(job: "PretrainJob") -> Problems:
    # These keys are derived from the manifest; letting the raw config set them would break
    # the constant-global-batch invariant on resume.
    owned = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"}
    clash = sorted(owned & set(job.spec.deepspeed.config))
    if clash:
        return [("spec.deepspeed.config", f"{clash} are derived from spec.training; set them there instead")]
    return []


def _deadline(job: "PretrainJob") -> Problems:
    c = job.spec.checkpoint
    if c.preemption_deadline_s >= job.spec.recovery.heartbeat_timeout_s:
        return [("spec.checkpoint.preemption_deadline_s",
                 "must be below recovery.heartbeat_timeout_s, or a preempted attempt looks stalled")]
    return []


RULES: list[Callable[["PretrainJob"], Problems]] = [
    _workers_range, _batch, _precision, _optimizer, _positions, _heads, _nsp, _tokenizer, _warmup,
    _offload, _compile, _unpad, _deepspeed_overrides, _deadline,
]


def consistency_problems(job: "PretrainJob") -> Problems:
    problems: Problems = []
    for rule in RULES:
        problems += rule(job)
    return problems
