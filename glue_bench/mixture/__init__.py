"""Mixtures of existing models without training: routers (routers.py) and the model-level mixture
as an lm-eval LM (model_level.py). FFN- and block-level mixtures, the trained MLP router, the
Model-GLUE recipe and stacking are not implemented yet (conf/mixture/none.yaml is the only
mixture a job accepts)."""
