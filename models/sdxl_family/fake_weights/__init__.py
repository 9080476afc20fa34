"""The family's fake-weight builders: what writes the tiny and random-full layouts (workers, tests, benchmarks).

- ``layout_configs``: the configs of every model in the layout, tiny and published.
- ``builder``: the layout from those configs with random weights, built once per weights directory.
- ``annotators``: compact random checkpoints for every kind's controlnet-aux detector.
- ``tiny_lora``: a random LoRA that fits the tiny SDXL (``python -m models.sdxl_family.fake_weights.tiny_lora``).
"""
