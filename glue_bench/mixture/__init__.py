"""Mixtures of existing models without training: routers (routers.py), the model-level mixture as
an lm-eval LM (model_level.py), FFN- and block-level mixtures inside one model (layered.py),
building them from a job's config (build.py), the Model-GLUE recipe (recipe.py) and stacking in
depth (stack.py). FFN-level mixtures with linear gates save as Mixtral (layered.save_mixtral)."""


class MixtureError(Exception):
    """A mixture cannot be built as configured; one line naming the setting at fault."""
