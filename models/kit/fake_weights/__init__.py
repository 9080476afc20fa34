"""What every model's fake-weight builders share (workers, tests and benchmarks only: torch).

- ``building``: build a weights folder once per fingerprint of its builders' source, safely when
  workers start together, and the small CLIP tokenizer every fake layout saves.
- ``published``: the published full-size ``config.json`` files the random-full profile builds from.
"""
