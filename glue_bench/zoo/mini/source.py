"""The mini zoo as a model source: models built on demand into the cache (`build`), their layers
and tokenizers known from their recipes (`spec`), their training data at hand (`data`)."""

from __future__ import annotations

from glue_bench.zoo.mini import build, spec
from glue_bench.zoo.refs import ModelRef
from glue_bench.zoo.sources import Source


class MiniSource(Source):
    def ref(self, name: str, mini_size: str, replicate: int) -> ModelRef:
        path = build.model_dir(name, mini_size, replicate)  # its name holds the cache version and recipe fingerprint
        # key: mini-<version>/<size>[-r<replicate>]/<name>-<fingerprint> (not the cache path, which varies by machine)
        key = "/".join(p.name for p in (path.parents[2], path.parents[1], path))
        return ModelRef(name, "mini", str(path), key=key, replicate=replicate)

    def ensure(self, refs, mini_size):
        for replicate in sorted({r.replicate for r in refs}):
            build.ensure_models([r.name for r in refs if r.replicate == replicate], mini_size, replicate=replicate)

    def depth(self, ref, mini_size):
        size = spec.SIZES[mini_size]
        return (size.foreign_arch if spec.RECIPES[ref.name].foreign else size.arch)["layers"]

    def tokenizer_identity(self, ref):
        # known before the model is built: the replicate's own tokenizer, or its foreign one
        return "mini", ref.replicate, spec.recipe(ref.name, ref.replicate).foreign

    def own_documents(self, ref, n, seed=0):
        return build.expert_prompts(ref.name, n, seed, ref.replicate)
