"""Text corpora given by a setting (a trained router's, a data-dependent merge's calibration data):
`chat`, the mini zoo's chat documents, or a file of documents. Here, below both mixture/ and
merge/, so each reads corpora the same way without importing the other."""

from __future__ import annotations

import json
from pathlib import Path


class CorpusError(ValueError):
    """A corpus cannot be read as configured; one line naming the setting."""


def read_corpus(corpus, setting: str, replicate: int = 0) -> list[str]:
    """The documents of `corpus`, set by `setting` (named in errors): `chat` (the chat documents of
    the mini zoo's replicate `replicate`) or a file: JSON lines with a "text" field, or plain text
    with documents separated by blank lines."""
    if corpus == "chat":
        from glue_bench.zoo.mini.build import domain_texts

        texts = domain_texts("chat", replicate)
    elif isinstance(corpus, str) and corpus and Path(corpus).is_file():
        raw = Path(corpus).read_text()
        texts = _json_lines(raw, corpus, setting) if corpus.endswith(".jsonl") else \
            [doc.strip() for doc in raw.split("\n\n") if doc.strip()]
    else:
        raise CorpusError(f"{setting}={corpus!r}: `chat` (the mini zoo's) or an existing .jsonl/.txt file")
    if not texts:
        raise CorpusError(f"{setting}={corpus!r}: no documents")
    return texts


def _json_lines(raw: str, corpus: str, setting: str) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            texts += [json.loads(line)["text"]] if line.strip() else []
        except (ValueError, KeyError, TypeError):
            raise CorpusError(f'{setting}={corpus}: line {number} is not JSON with a "text" field') from None
    return texts
