"""A mixture's settings (conf/mixture/, conf/router/'s name), resolved and checked before anything
is built; no torch here, so that reports read stored mixtures' settings as jobs do."""

from __future__ import annotations

from dataclasses import dataclass, fields

from glue_bench.mixture import MixtureError

LEVELS = ("model", "ffn", "block")
ROUTERS = ("prompt", "mlp")


@dataclass(frozen=True)
class MixtureSettings:
    """A mixture's settings, their defaults declared here once (conf/mixture/*.yaml spell them out)."""
    level: str                  # model, ffn or block
    routing: str = "token"      # token or sample (a layered mixture's)
    shared: str = "merge"       # merge or base: where a layered mixture's shared parts come from
    top_k: int = 1              # experts per token (model level: 1)
    dense_layers: int = 0       # hybrid: the first N layers dense

    @classmethod
    def of(cls, mixture_cfg: dict) -> "MixtureSettings":
        """The settings `mixture_cfg` gives, each it lacks at its default (unchecked: `check_mixture`)."""
        return cls(**{f.name: mixture_cfg[f.name] for f in fields(cls) if f.name in mixture_cfg})


def check_mixture(mixture_cfg: dict, router_name: str, method: str, n_experts: int,
                  depth: int | None) -> MixtureSettings:
    """Every mixture setting checked before anything is built (one line naming the first at fault):
    `depth` is the experts' number of layers where it is known before loading (`zoo.declared_depth`),
    else None and `dense_layers` is checked once the shared model is built."""
    level = mixture_cfg.get("level")
    if level not in LEVELS:
        raise MixtureError(f"mixture.level={level!r}: not implemented (available: {', '.join(LEVELS)})")
    if router_name not in ROUTERS:
        raise MixtureError(f"router={router_name}: not available for a {level}-level mixture "
                           f"(available: {', '.join(ROUTERS)})")
    settings = MixtureSettings.of(mixture_cfg)
    routing, shared, top_k, dense = settings.routing, settings.shared, settings.top_k, settings.dense_layers
    for name, value in (("top_k", top_k), ("dense_layers", dense)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MixtureError(f"mixture.{name}={value!r}: expected a whole number")
    if level == "model":
        if top_k != 1:
            raise MixtureError(f"mixture.top_k={top_k}: a model-level mixture answers with one expert (top_k=1)")
        return settings
    if routing not in ("token", "sample"):
        raise MixtureError(f"mixture.routing={routing!r}: token or sample")
    if shared not in ("merge", "base"):
        raise MixtureError(f"mixture.shared={shared!r}: merge or base")
    if shared == "merge" and method == "none":
        raise MixtureError("mixture.shared=merge: needs a merge method (method=linear, ...)")
    if not 1 <= top_k <= n_experts:
        raise MixtureError(f"mixture.top_k={top_k}: must be between 1 and the number of experts ({n_experts})")
    check_dense_layers(dense, depth)
    return settings


def check_dense_layers(dense: int, depth: int | None) -> None:
    if depth is not None and not 0 <= dense < depth:
        raise MixtureError(f"mixture.dense_layers={dense}: must be in [0, {depth - 1}]")
