"""Mixtures of existing models without training: routers (routers.py), the model-level mixture as
an lm-eval LM (model_level.py) and building one from a job's config (build.py). FFN- and
block-level mixtures, the trained MLP router, the Model-GLUE recipe and stacking are not
implemented yet: a job asking for them gets one line saying so."""
