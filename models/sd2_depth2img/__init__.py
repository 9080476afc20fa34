"""``kiln/sd2-depth2img``: Stable Diffusion 2 depth-to-image (``StableDiffusionDepth2ImgPipeline``)."""

from models.sd2_depth2img.schema import Depth2ImgInput
from shared.model_spec import ModelSpec
from shared.scheduling import queues

SPEC = ModelSpec(
    owner="kiln",
    name="sd2-depth2img",
    description="Stable Diffusion 2 depth-to-image: transform an image while keeping its depth structure.",
    input_model=Depth2ImgInput,
    queue=queues.SD2_DEPTH,
    predictor="models.sd2_depth2img.predictor:Depth2ImgPredictor",
    weights_settings=("sd2_depth2img_weights",),
    licence="stabilityai/stable-diffusion-2-depth (CreativeML Open RAIL++-M); the depth estimator ships with it.",
)
