"""The models Kiln serves, one folder each, listed in ``models/registry.py``.

A model's folder holds everything about it:

- ``__init__.py``: its ``SPEC`` (a ``shared.model_spec.ModelSpec``: name, description, input schema,
  queue, predictor, the settings naming its full weights). Light: the API imports it.
- ``schema.py``: its inputs, a pydantic model built from ``shared.inputs.schema``. Light too.
- ``predictor.py``: its ``Predictor`` (``models.kit.contract``): torch and diffusers, workers only.
- ``weights.py`` and ``configs/``: how its tiny and random-full weights are built (small configs,
  the published full-size configs), alongside the full profile's references.

``sdxl_family/`` is not a model: it is what the SDXL + IP-Adapter + ControlNet models share (their
input schema, one SDXL base per process, the layout builders). An XL model folder declares its
ControlNet kind (``sdxl_family.spec.ControlKind``) and little else. ``kit/`` is not a model either:
it is the predictor contract and the tools every predictor uses (``models.kit``).
"""
