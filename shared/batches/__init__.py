"""Batches as objects (``/v1/batches``): their records, counts and completion."""
