"""Waiting on predictions: the process's one event subscription, SSE streams, ``Prefer: wait``."""
