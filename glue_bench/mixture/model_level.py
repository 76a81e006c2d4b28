"""Model-level mixture: each model an expert, the input routed once, the chosen expert answering
with its whole stack.

`ModelMixtureLM` is an lm-eval LM, so the experts may differ in architecture and tokenizer (the
CrystalChat case): the router reads the text, and each expert is an lm-eval LM of its own (an
`HFLM` with its own tokenizer). One routing decision per document: all requests of a document (the
choices of a multiple-choice item) go to the expert chosen on the context of its first request.
Routing each request alone would compare choices scored by different models, e.g. WinoGrande's,
whose contexts differ from choice to choice.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from lm_eval.api.model import LM


class DispatchingLM(LM):
    """An lm-eval LM whose three request types all go through `_dispatch(requests, method)`, which
    hands them on to inner LMs by that method's name."""

    def _dispatch(self, requests, method: str) -> list:
        raise NotImplementedError

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._dispatch(requests, "loglikelihood")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._dispatch(requests, "loglikelihood_rolling")

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._dispatch(requests, "generate_until")


class ModelMixtureLM(DispatchingLM):
    def __init__(self, experts: dict[str, LM], router: Callable[[list[str]], list[int]]):
        super().__init__()
        self.names, self.experts, self.router = list(experts), list(experts.values()), router
        self.usage: Counter = Counter()  # expert name -> documents routed to it

    def _dispatch(self, requests, method: str) -> list:
        docs = by_document(requests)
        choices = self.router([first.args[0] for first, _ in docs]) if docs else []
        self.usage.update(self.names[e] for e in choices)
        out: list = [None] * len(requests)
        for e, expert in enumerate(self.experts):
            mine = [i for (_, positions), choice in zip(docs, choices) if choice == e for i in positions]
            if mine:
                for i, result in zip(mine, getattr(expert, method)([requests[i] for i in mine])):
                    out[i] = result
        return out



def by_document(requests) -> list[tuple[object, list[int]]]:
    """The requests grouped by document (task, doc_id), in order of first appearance: for each,
    its first request (the lowest `idx`: the context a routing decision reads) and the positions
    of all of its requests. A request without a doc_id is a document of its own."""
    groups: dict = {}
    for position, request in enumerate(requests):
        doc = (request.task_name, request.doc_id) if request.doc_id is not None else ("", position)
        first, positions = groups.setdefault(doc, (request, []))
        positions.append(position)
        if request.idx < first.idx:
            groups[doc] = (request, positions)
    return list(groups.values())
