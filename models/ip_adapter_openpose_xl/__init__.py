"""``kiln/ip-adapter-openpose-xl``: SDXL + IP-Adapter + an openpose ControlNet, poses from controlnet-aux."""

from pathlib import Path

from models.sdxl_family.spec import ControlKind, xl_model_spec

CONTROL = ControlKind(
    name="openpose",
    weights_setting="controlnet_openpose_xl_weights",
    published_config=Path(__file__).parent / "configs" / "controlnet_openpose_sdxl.json",
    detector="controlnet_aux:OpenposeDetector",
    random_detector_checkpoints="models.ip_adapter_openpose_xl.fake_weights:write_random_checkpoints",
)

SPEC = xl_model_spec(
    owner="kiln",
    name="ip-adapter-openpose-xl",
    description="SDXL with IP-Adapter and an openpose ControlNet: an image prompt, posed like the person "
    "in a reference image.",
    control=CONTROL,
    control_licence="thibaud/controlnet-openpose-sdxl-1.0 (other: see its model card)",
    predictor="models.ip_adapter_openpose_xl.predictor:IPAdapterOpenposeXLPredictor",
)
