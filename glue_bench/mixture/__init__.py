"""Mixtures of existing models without training: routers (routers.py), the model-level mixture as
an lm-eval LM (model_level.py), FFN- and block-level mixtures inside one model (layered.py),
building them from a job's config (build.py) and the Model-GLUE recipe (recipe.py). Stacking and
saving mixtures in a standard format are not implemented yet."""
