"""Choosing what to merge: mergeable families (cluster.py), the proxy set and fitness searches
optimise (proxy.py), the search problem (problem.py), the strategies (heuristic.py, evolutionary.py,
dataflow.py) and judging their choice on the final items (report.py)."""
