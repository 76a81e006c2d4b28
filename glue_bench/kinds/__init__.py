"""Candidate kinds: what one job builds, registered by name the way merge methods are.

A kind claims the configs it builds (by strategy and mixture), refuses in one line the strategy /
mixture / router combinations it does not accept, before any work, and builds a `Candidate`: what
the shared tail (`glue_bench.run`) evaluates, stores and saves. One module each:

    merge       one merge method over the zoo (or strategy.models)
    selective   a search on the proxy set (heuristics, CMA-ES, data flow), judged on the final items
    recipe      the Model-GLUE recipe: families, a selective merge in each, a model-level mixture
    ensemble    every model answers, their predictions averaged (the output ensemble)
    mixture     FFN-, block- or model-level mixture behind a router
    stack       the models' layers stacked in depth
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from omegaconf import DictConfig

from glue_bench.errors import JobError
from glue_bench.job import ItemSet, Job
from glue_bench.provenance import state_fingerprint


@dataclass
class AlsoJudged:
    """A candidate judged beside the job's own on the same items, as a job of its own (the merge
    of all candidates beside a selective choice). Skipped when its key is in the store already."""
    key: str
    label: str
    make_lm: Callable[[], object]   # -> an lm-eval LM, called only if the job is not stored yet
    row: dict                       # row fields beside the job's common ones (method, models...)


@dataclass
class Candidate:
    label: str                              # the table's row name
    make_lm: Callable[[], object]           # -> the lm-eval LM to evaluate; called once, after `also_judged`
    method: str                             # the merge method used ("none" if none)
    models: list[str]                       # the models it is built from
    build_s: float
    load_s: float | None = None
    tokenizer: object = None                # counts the tokens processed, when given
    details: dict = field(default_factory=dict)          # stored in `config` beside the payload
    items: ItemSet | None = None                         # None: the whole test split
    also_judged: list[AlsoJudged] = field(default_factory=list)
    save: Callable[[Path], None] | None = None           # save=true: writes the candidate into a folder
    after_eval: Callable[[], dict] | None = None         # what the evaluation showed (routing): details
    summary: dict = field(default_factory=dict)          # more fields of the job's returned summary


class Kind:
    """One candidate kind. Subclasses set the class attributes and implement `claims` and `build`."""
    name: ClassVar[str]
    priority: ClassVar[int]  # claims are asked lowest first: the first kind that claims a config builds it

    @staticmethod
    def claims(cfg: DictConfig) -> bool:
        raise NotImplementedError

    def unused(self, cfg: DictConfig) -> tuple[str, ...]:
        """Config groups this kind ignores for `cfg`: left out of the job key, since the candidate
        is the same whatever they say."""
        return ()

    def nothing_to_build(self, cfg: DictConfig) -> bool:
        """True when the job is only the zoo's single models (method=none)."""
        return False

    def refusal(self, cfg: DictConfig) -> str | None:
        """Why this kind cannot build `cfg` (one line), or None. Checked before any work."""
        if cfg.router.name != "none":
            return f"router={cfg.router.name}: only mixtures route (add mixture=model)"
        return None

    def check(self, job: Job) -> None:
        """Checks that need the resolved job (members, method parameters), before any work."""

    def check_members(self, job: Job) -> None:
        """Checks that read the members' files, once they are on disk (`Job.prepare`) and before
        any model is evaluated."""

    def build(self, job: Job) -> Candidate:
        raise NotImplementedError

    def fingerprint(self, lm) -> str | None:
        """The fingerprint of the weights an LM this kind builds evaluates with (stored as `weights`):
        here an HF model's state dict (an lm-eval HFLM's `model`); a kind whose LM is another shape
        says how its weights are seen, or None where they cannot be (missing, not a hash of
        something else)."""
        import torch

        model = getattr(lm, "model", None)
        return state_fingerprint(model) if isinstance(model, torch.nn.Module) else None


KINDS: dict[str, type[Kind]] = {}


def register(cls: type[Kind]) -> type[Kind]:
    KINDS[cls.name] = cls
    return cls


def kind_for(cfg: DictConfig) -> Kind:
    """The kind that builds this config, or a one-line JobError naming the combination refused."""
    for module in pkgutil.iter_modules(__path__):  # every module here: a new kind is its module alone
        importlib.import_module(f"{__name__}.{module.name}")
    for kind in sorted((cls() for cls in KINDS.values()), key=lambda k: (k.priority, k.name)):
        if kind.claims(cfg):
            if why := kind.refusal(cfg):
                raise JobError(why)
            return kind
    raise JobError(f"strategy={cfg.strategy.name} mixture={cfg.mixture.name}: no candidate kind builds this "
                   f"(kinds: {', '.join(KINDS)})")
