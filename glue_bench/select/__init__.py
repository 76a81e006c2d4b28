"""Choosing what to merge: mergeable families (cluster.py) and the proxy set searches optimise
(proxy.py)."""
