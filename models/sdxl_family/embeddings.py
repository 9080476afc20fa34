"""Image-prompt embeddings a client keeps and reuses: the file ``return_embeddings`` writes and ``ip_embeddings`` reads.

The file is a safetensors file with one tensor, ``ip_embeddings``: ``(2, n, ...)`` float, the
[unconditional, image prompt] embeddings of the n image prompts exactly as the pipeline takes them
(``(2, n, dim)`` for the standard adapter's projected ViT-bigG embedding; ``(2, n, tokens, dim)`` for
the Plus adapters' ViT-H patch features), and in its metadata the ``ip_adapter_variant`` that made it.
A prediction given it skips the image encoder; the same seed then gives the same pixels.

Light (no torch): the API checks an uploaded file's header against these shapes at submission; the
worker checks a fetched one the same way before reading its tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from models.sdxl_family.fake_weights.layout_configs import full_configs, tiny_configs
from models.sdxl_family.schema import MAX_IP_IMAGES, IPAdapterVariant
from shared.inputs.safetensors_files import METADATA_KEY, header_tensors
from shared.inputs.safetensors_files import SafetensorsInputError as Refused
from shared.settings import Settings

# The output's name (``embeddings.safetensors``) and what it holds.
EMBEDDINGS_NAME = "embeddings"
IP_EMBEDDINGS = "ip_embeddings"
VARIANT_KEY = "ip_adapter_variant"
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})


def ip_embedding_dims(settings: Settings, variant: IPAdapterVariant) -> tuple[int, ...]:
    """The dims of one image prompt's embedding for ``variant`` under the settings' weights profile: the
    projection width (standard), or patch tokens and width (Plus)."""
    return _dims(settings.weights_profile == "tiny", variant)


@cache
def _dims(tiny: bool, variant: IPAdapterVariant) -> tuple[int, ...]:
    # Read from the layout's configs once per process (the full ones are files): every submission of an
    # uploaded ip_embeddings file checks its shape against them.
    configs = tiny_configs() if tiny else full_configs()
    if variant is IPAdapterVariant.STANDARD:
        return (configs.image_encoder["projection_dim"],)
    encoder = configs.plus_image_encoder
    tokens = (encoder["image_size"] // encoder["patch_size"]) ** 2 + 1
    return (tokens, encoder["hidden_size"])


def check_ip_embeddings_header(header: Mapping[str, Any], inputs: Mapping[str, Any], settings: Settings) -> None:
    """Refuse (``Refused``: a 422 at submission) an ``ip_embeddings`` file, by its safetensors header, that
    this request cannot use."""
    check_ip_embeddings(header_tensors(header), header.get(METADATA_KEY) or {}, inputs, settings)


def check_ip_embeddings(
    tensors: Mapping[str, tuple[str, tuple[int, ...]]],
    metadata: Mapping[str, str],
    inputs: Mapping[str, Any],
    settings: Settings,
) -> None:
    """Refuse ``ip_embeddings`` (``tensors``: name to dtype and shape) that the request ``inputs`` (as JSON)
    cannot use on this deployment's weights: ``Refused`` says why."""
    if set(tensors) != {IP_EMBEDDINGS}:
        raise Refused(
            f"must hold one tensor named {IP_EMBEDDINGS!r} (a return_embeddings output), found {sorted(tensors)[:5]}"
        )
    dtype, shape = tensors[IP_EMBEDDINGS]
    if dtype not in FLOAT_DTYPES:
        raise Refused(f"tensor {IP_EMBEDDINGS!r} is {dtype}, expected floats (F32, F16 or BF16)")
    variant = IPAdapterVariant(inputs.get(VARIANT_KEY) or IPAdapterVariant.STANDARD.value)
    made_by = metadata.get(VARIANT_KEY)
    if made_by is not None and made_by != variant.value:
        raise Refused(f"was made with ip_adapter_variant {made_by!r}: give that variant, or encode the images again")
    dims = ip_embedding_dims(settings, variant)
    expected = f"[2, n, {', '.join(map(str, dims))}] with n from 1 to {MAX_IP_IMAGES}"
    if len(shape) != 2 + len(dims) or shape[0] != 2 or tuple(shape[2:]) != dims:
        raise Refused(f"tensor {IP_EMBEDDINGS!r} has shape {list(shape)}, expected {expected} for {variant.value}")
    if not 1 <= shape[1] <= MAX_IP_IMAGES:
        raise Refused(f"holds {shape[1]} image prompts, expected 1 to {MAX_IP_IMAGES}")
    for name in ("ip_adapter_scales", "ip_masks"):
        given = inputs.get(name)
        if given is not None and len(given) != shape[1]:
            raise Refused(f"holds {shape[1]} image prompts but {name} has {len(given)} entries: give one each")
