"""The models Kiln serves, one folder each, listed in ``models/registry.py``.

A model's folder holds everything about it:

- ``__init__.py``: its ``SPEC`` (a ``shared.model_spec.ModelSpec``: name, description, input schema,
  queue, predictor, the settings naming its full weights). Light: the API imports it.
- ``schema.py``: its inputs, a pydantic model built from ``shared.inputs.schema``. Light too.
- ``predictor.py``: its ``Predictor`` (``models.kit.contract``): torch and diffusers, workers only.
- ``weights.py``: what its predictor loads in each weights profile (the full profile's reference, or
  the local folder of fake weights, built on first use); an XL model's are the family's.
- ``configs/``: the published full-size configs the random-full profile builds (sources in its README).

Fake weights are kept apart from the model code, under one name: ``fake_weights`` (a module, or a
package where there are several builders) is the code that writes random-weight pipelines, detector
checkpoints and LoRA files for the tiny profile (what ``make run`` and the tests load), the
random-full profile (GPU timing) and the tests. ``models/<name>/fake_weights.py`` builds a model's
own, ``models/sdxl_family/fake_weights/`` the XL models' shared layout, ``models/kit/fake_weights/``
what every builder uses. Predictor code imports a builder only to build a folder on first use; the
light modules never import one.

``sdxl_family/`` is not a model: it is what the SDXL + IP-Adapter + ControlNet models share (their
input schema, one SDXL base per process, the weights layout). An XL model folder declares its
ControlNet kind (``sdxl_family.spec.ControlKind``) and little else. ``kit/`` is not a model either:
it is the predictor contract and the tools every predictor uses (``models.kit``).
"""
