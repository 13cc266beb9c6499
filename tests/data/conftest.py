"""Corpora and prepared shard sets shared by the data tests (small, real prose: stdlib docstrings)."""

from __future__ import annotations

import pytest

from orchestrator.data.prepare import PrepareConfig, prepare
from orchestrator.data.sources import module_docstrings, stdlib_files


def stdlib_texts(count: int, start: int = 0) -> list[str]:
    """Docstrings of `count` stdlib modules, as documents (blank lines inside collapsed)."""
    out = []
    for path in stdlib_files()[start:]:
        doc = module_docstrings(path)
        if len(doc) > 200:
            out.append(doc)
        if len(out) == count:
            break
    return out


def write_text_corpus(directory, docs_per_file: list[list[str]]) -> list[str]:
    """Plain-text files where a blank line separates documents (so paragraphs are joined)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, docs in enumerate(docs_per_file):
        p = directory / f"part-{i}.txt"
        p.write_text("\n\n".join(" ".join(d.split()) for d in docs) + "\n")
        paths.append(str(p))
    return paths


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> list[str]:
    docs = stdlib_texts(24)
    root = tmp_path_factory.mktemp("corpus")
    return write_text_corpus(root / "text", [docs[:8], docs[8:16], docs[16:]])


@pytest.fixture(scope="session")
def stdlib_shards(tmp_path_factory) -> str:
    """The built-in corpus prepared once (about 0.4M tokens, several shards)."""
    out = str(tmp_path_factory.mktemp("shards") / "stdlib")
    prepare(PrepareConfig(inputs=["builtin:python-stdlib-docs"], output=out, seq_len=64, vocab_size=3000,
                          use_ray=False, shard_bytes=96 * 2**10), progress=False)
    return out


@pytest.fixture(scope="session")
def small_vocab(small_corpus, tmp_path_factory) -> str:
    """A vocab.txt trained once on the small corpus (a given vocab makes prepare byte-reproducible)."""
    out = tmp_path_factory.mktemp("vocab")
    index = prepare(PrepareConfig(inputs=small_corpus[:1], output=str(out / "v"), seq_len=32, vocab_size=800,
                                  use_ray=False), progress=False)
    path = out / "vocab.txt"
    path.write_bytes(open(index.tokenizer_uri("vocab"), "rb").read())
    return str(path)


from tests.support.s3server import s3_env, s3_fault_proxy, s3_server  # noqa: E402,F401  (S3 fixtures)
