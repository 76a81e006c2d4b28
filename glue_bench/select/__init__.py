"""Choosing what to merge: clustering a zoo into mergeable families (cluster.py)."""
