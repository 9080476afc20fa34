"""The predictor kit every model folder builds on (workers only: torch and diffusers).

- ``contract``: the ``Predictor`` contract (setup, prepare, generate, batch_key) and the context a
  runner hands it.
- ``rows``, ``schedulers``: batch rows and per-row generators; the scheduler names the inputs accept.
- ``tuning``: per-device throughput knobs, resolved from settings and applied to each loaded pipeline.
- ``devices``: the torch device and dtype a worker runs on.
- ``weights.loading``: loading a model's weights by profile through the one ``from_pretrained`` path.
- ``fake_weights``: what every model's fake-weight builders share (``models/__init__.py`` says where
  fake weights live): building a folder once, the tiny tokenizer, the published configs.

It imports ``shared`` and nothing above ``models``: the workers import it, never the other way round.
"""
