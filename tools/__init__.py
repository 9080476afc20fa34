"""Benchmarks and stress tools with their own commands (``make chaos``); not collected by ``make test``."""
