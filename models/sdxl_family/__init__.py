"""What the SDXL + IP-Adapter + ControlNet models share; not a model itself (no ``SPEC``).

``kiln/ip-adapter-depth-xl`` and ``kiln/ip-adapter-openpose-xl`` differ only in their ControlNet and
the controlnet-aux detector that makes its control map, which each declares as a ``ControlKind``
(``spec.py``). The rest is here: the inputs (``schema.py``), the predictor that keeps one SDXL base
per process (``predictor.py``), where the weights come from (``weights.py``, ``layout.py``), the
published configs (``configs/``) and the builders of the tiny and random-full layouts
(``fake_weights/``).
"""
