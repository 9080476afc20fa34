"""``kiln/ip-adapter-depth-xl``: SDXL + IP-Adapter + a depth ControlNet, depth maps from MiDaS."""

from pathlib import Path

from models.sdxl_family.spec import ControlKind, xl_model_spec

CONTROL = ControlKind(
    name="depth",
    weights_setting="controlnet_depth_xl_weights",
    published_config=Path(__file__).parent / "configs" / "controlnet_depth_sdxl.json",
    detector="controlnet_aux:MidasDetector",
    random_detector_checkpoints="models.ip_adapter_depth_xl.fake_weights:write_random_checkpoints",
)

SPEC = xl_model_spec(
    owner="kiln",
    name="ip-adapter-depth-xl",
    description="SDXL with IP-Adapter and a depth ControlNet: an image prompt, laid out like the depth of "
    "a reference image.",
    control=CONTROL,
    control_licence="diffusers/controlnet-depth-sdxl-1.0 (CreativeML Open RAIL++-M)",
    predictor="models.ip_adapter_depth_xl.predictor:IPAdapterDepthXLPredictor",
)
