"""Fine-tuning fixtures: a tiny BERT written as a real committed checkpoint (the trainer's layout, through
CheckpointStore: state.json, the DeepSpeed stage-0 model file, the tokenizer, the manifest), its
export, and small data files for the three tasks.

A pretraining run would cost a minute; the checkpoint here is the same files a run writes, made from a
randomly initialised bert-tiny-shaped model (hidden 32), so every test stays a few seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.support.s3server import s3_env, s3_server  # noqa: F401

WORDS = ("the a of and to in is was he she it they john mary paris london berlin acme globex corp city "
         "good bad great awful film movie plot actor loved hated boring fun who where which what company "
         "person place works lives visited born played won lost team match cup bank river red blue").split()
NAMES = {"PER": ["john", "mary"], "LOC": ["paris", "london", "berlin"], "ORG": ["acme", "globex"]}
MODEL_FIELDS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 128}


def write_vocab(path: Path) -> Path:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,?!'-"]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    path.write_text("\n".join(dict.fromkeys(special + chars + pieces + list(WORDS))) + "\n")
    return path


def write_checkpoint(uri: str, work: Path, step: int = 2) -> str:
    """A committed checkpoint of a tiny random BertForMaskedLM at ``uri`` (local or s3://)."""
    import torch
    from transformers import BertTokenizerFast

    from orchestrator.model import build_model
    from orchestrator.train.checkpoint.store import CheckpointStore, TrainState

    local = work / "ckpt-files"
    tok_dir = local / "tokenizer"
    tok_dir.mkdir(parents=True)
    vocab = write_vocab(work / "vocab.txt")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    tokenizer.save_pretrained(str(tok_dir))
    (tok_dir / "vocab.txt").write_bytes(vocab.read_bytes())  # what the trainer keeps with every checkpoint
    fields = {**MODEL_FIELDS, "vocab_size": len(tokenizer)}
    torch.manual_seed(0)
    model = build_model(fields, nsp=False)
    (local / "ds").mkdir()
    torch.save({"module": model.state_dict()}, local / "ds" / "mp_rank_00_model_states.pt")
    state = TrainState(step=step, tokens_seen=0, cursor={}, world_size=1, attempt=1, zero_stage=0,
                       global_batch_size=8, job_id="finetune-fixture", model_config=fields, nsp=False)
    (local / "state.json").write_bytes(state.to_json())
    store = CheckpointStore(uri)
    store.register_attempt(1)
    store.commit(step, 1, 1, store.upload_dir(local, step, 1))
    return uri


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("ckpt")
    return write_checkpoint(str(work / "checkpoints"), work)


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory) -> Path:
    from orchestrator.train.export import export_checkpoint

    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "hf").output


def _sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    kind = rng.choice(sorted(NAMES))
    verb = {"PER": "visited", "LOC": "is", "ORG": "works"}[kind]
    name = rng.choice(NAMES[kind])
    tokens = ["the", "team", verb, name] if rng.random() < 0.5 else [name, verb, "the", "city"]
    tags = ["O"] * len(tokens)
    tags[tokens.index(name)] = f"B-{kind}"
    return tokens, tags


def write_conll(path: Path, sentences: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(sentences):
        for token, tag in zip(*_sentence(rng)):
            lines.append(f"{token} NN I-NP {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_classification(path: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    labels = {"pos": ["good", "great", "loved", "fun"], "neg": ["bad", "awful", "hated", "boring"]}
    out = []
    for _ in range(rows):
        label = rng.choice(["neg", "pos"])
        out.append({"text": f"the movie was {rng.choice(labels[label])}", "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def write_questions(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    paragraphs = []
    for i in range(count):
        kind, other = rng.sample(["PER", "LOC"], 2)
        name = rng.choice(NAMES[kind])
        context = f"the team played and {name} won the cup"
        qas = [{"id": f"q{i}a", "question": "who won the cup" if kind == "PER" else "where was the match",
                "answers": [{"text": name, "answer_start": context.index(name)}]},
               {"id": f"q{i}b", "question": "which company works", "answers": [], "is_impossible": True}]
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "test", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("data")
    return {"classification": (write_classification(d / "train.jsonl", 64, 1),
                               write_classification(d / "valid.jsonl", 24, 2)),
            "token-classification": (write_conll(d / "train.conll", 64, 1), write_conll(d / "valid.conll", 24, 2)),
            "question-answering": (write_questions(d / "train.json", 32, 1), write_questions(d / "valid.json", 12, 2))}
