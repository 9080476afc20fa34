"""``kiln/instantid-xl``: a likeness from one photo. SDXL + InstantID's face adapter and keypoint ControlNet.

InstantID (arXiv 2401.07519) steers SDXL with a face-recognition embedding (InsightFace's ArcFace, 512
numbers) through an IP-Adapter of its own, and places the face with a ControlNet that reads the five
facial keypoints (eyes, nose, mouth corners) and the same face tokens instead of the text. Kiln runs it
on the family's shared SDXL: the same UNet as the other XL models, with InstantID's adapter loaded beside
theirs (``models.sdxl_family.base``). Its weights and InsightFace's are for non-commercial research
only: it is served only where the operator sets ``KILN_ALLOW_NONCOMMERCIAL_MODELS=true``.
"""

from models.instantid_xl.schema import InstantIDXLInput
from models.sdxl_family.spec import AdapterModelSpec, ExtraAdapter
from shared.scheduling import queues

ADAPTER = ExtraAdapter(name="instantid", weights_file="models.instantid_xl.weights:adapter_file")

SPEC = AdapterModelSpec(
    owner="kiln",
    name="instantid-xl",
    description="InstantID on SDXL: a likeness of the person in one photo (or several, or a saved face "
    "embedding), placed by their facial keypoints, in any style the prompt describes.",
    input_model=InstantIDXLInput,
    queue=queues.SDXL,
    predictor="models.instantid_xl.predictor:InstantIDXLPredictor",
    weights_settings=(
        "sdxl_base_weights",
        "sdxl_vae_fp16_weights",
        "ip_adapter_weights",
        "instantid_weights",
        "insightface_weights",
    ),
    extra_adapter=ADAPTER,
    licence="InstantX/InstantID's ControlNet and adapter and InsightFace's antelopev2 face models are for "
    "non-commercial research only; SDXL 1.0 base (CreativeML Open RAIL++-M).",
    noncommercial=True,
)
