"""The corpus abstraction: offline Wikipedia, local files, hub-style datasets, splits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tools.corpus import Corpus, CorpusSpec, load_corpus, split_sentences
from tools.errors import CorpusError


@pytest.fixture(scope="module")
def wiki() -> Corpus:
    return load_corpus()


def test_offline_wikipedia_corpus(wiki: Corpus) -> None:
    assert len(wiki.documents) == 10_033
    assert all(doc.strip() for doc in wiki.documents)


def test_splits_are_disjoint_cover_everything_and_deterministic(wiki: Corpus) -> None:
    mixing, diff = wiki.split("mixing"), wiki.split("diff")
    assert set(mixing).isdisjoint(diff)
    assert len(mixing) + len(diff) == len(wiki.documents)
    assert 0.25 < len(mixing) / len(wiki.documents) < 0.35
    assert load_corpus().split("mixing") == mixing


def test_split_membership_does_not_depend_on_order(wiki: Corpus) -> None:
    shuffled = list(wiki.documents)
    random.Random(3).shuffle(shuffled)
    other = Corpus(wiki.spec, shuffled)
    assert set(other.split("diff")) == set(wiki.split("diff"))
    assert other.fingerprint != wiki.fingerprint or shuffled == wiki.documents


def test_sentence_samples_outnumber_documents(wiki: Corpus) -> None:
    sentences = wiki.samples("diff", unit="sentence")
    assert len(sentences) > 10_000
    assert split_sentences("Dr. Who is here at last. It rains a lot in Wales today! Yes.") == [
        "Dr. Who is here at last.",
        "It rains a lot in Wales today!",
    ]


def test_jsonl_and_text_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"document number {i}"}) for i in range(5)))
    corpus = load_corpus(CorpusSpec(source="jsonl", path=str(jsonl), text_column="body"))
    assert corpus.documents[0] == "document number 0" and len(corpus.documents) == 5
    text = tmp_path / "c.txt"
    text.write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    assert len(load_corpus(CorpusSpec(source="text", path=str(text))).documents) == 2


def test_hub_dataset_path_with_a_local_dataset_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "\n".join(json.dumps({"content": f"row {i}"}) for i in range(7))
    )
    spec = CorpusSpec(source="hub", dataset_id=str(folder), text_column="content")
    assert load_corpus(spec).documents == [f"row {i}" for i in range(7)]
    with pytest.raises(CorpusError, match="no column 'text'"):
        load_corpus(CorpusSpec(source="hub", dataset_id=str(folder)))


def test_bad_corpora_give_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CorpusError, match="no non-empty documents"):
        load_corpus(CorpusSpec(source="jsonl", path=str(empty)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(CorpusError, match="broken.jsonl:2: not valid JSON"):
        load_corpus(CorpusSpec(source="jsonl", path=str(broken)))
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(CorpusSpec(source="jsonl", path=str(tmp_path / "missing.jsonl")))


def test_leading_text_keeps_whole_sentences() -> None:
    from tools.corpus import leading_text

    text = "First sentence is here. Second sentence follows it. Third one is long enough too."
    assert leading_text(text, max_chars=60) == "First sentence is here. Second sentence follows it."
    assert leading_text(text, max_chars=5) == "First sentence is here."
