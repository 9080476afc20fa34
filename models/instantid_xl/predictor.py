"""The predictor of ``kiln/instantid-xl``: a face (photo, photos or saved embedding) to a likeness on SDXL.

``prepare`` finds who and where: the face embedding (InsightFace, or the saved file: then no face model
runs) and the five keypoints (from ``pose_image``, else the face photo, else the saved file, else a
frontal face in the middle), drawn as InstantID's keypoint image at the generation size, with the face's
region when ``enhance_face_region``. ``generate`` runs the family's ControlNet pipeline on the shared
SDXL with InstantID's adapter selected: the embedding goes to the UNet as the adapter's image prompt
(``[zeros, embedding]`` with guidance, as InstantID does) and, as 16 face tokens, to the ControlNet in
place of the prompt. Strengths are per-row tensors as in the other XL models, so predictions that differ
only in them share a call.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.instantid_xl.controlnet import IdentityControlNetModel, identity_applied
from models.instantid_xl.embeddings import FACE_EMBEDDING, FACE_KPS, check_face_embedding_header
from models.instantid_xl.face_weights import face_models_dir
from models.instantid_xl.faces import Face, FaceAnalyzer
from models.instantid_xl.keypoints import DEFAULT_FRONTAL_KPS, draw_kps, face_region_mask
from models.instantid_xl.schema import InstantIDXLInput
from models.instantid_xl.weights import controlnet_location
from models.kit.contract import (
    Output,
    PredictContext,
    Predictor,
    PreparedJob,
    StepCallback,
    resolve_seed,
)
from models.kit.devices import resolve_device
from models.kit.fast_mode import fast_mode_applied, resolve_speed
from models.kit.rows import fit, for_guidance, generators, rows, split_images
from models.kit.schedulers import SCHEDULERS
from models.kit.tensor_files import load_tensor_file, process_tensor_file_cache, safetensors_output
from models.kit.tuning import Tuning
from models.kit.weights.loading import load_model
from models.sdxl_family.base import SharedBase, shared_base
from models.sdxl_family.embeddings import EMBEDDINGS_NAME
from models.sdxl_family.ip_adapter_scales import role_row_scales
from models.sdxl_family.lora import LoraWeights, fetch_lora, lora_applied, process_lora_cache
from models.sdxl_family.predictor import family_pipeline
from models.sdxl_family.row_scales import adapter_projection, adapter_selected, row_scales_applied
from models.sdxl_family.schema import IPAdapterMode
from models.sdxl_family.weights import xl_weights
from shared.inputs.schema import Speed

# The adapter's name among the shared UNet's (``models.instantid_xl.ADAPTER``).
ADAPTER_NAME = "instantid"
# What a warm-up job's inputs name as its face: never fetched (the job is made, not prepared).
WARMUP_FACE_URL = "https://warm-up.invalid/face.safetensors"


@dataclass(frozen=True)
class InstantIDJob(PreparedJob):
    inputs: InstantIDXLInput
    # float32 ``[512]``, L2-normalised, and ``[5, 2]`` keypoints as fractions of width and height.
    embedding: np.ndarray
    kps: np.ndarray
    # InstantID's keypoint image at the generation size, and (enhance_face_region) ``(1, height, width)``:
    # 1 around the face, 0 elsewhere.
    control: Image.Image
    region: torch.Tensor | None
    lora: LoraWeights | None = None

    @property
    def group_key(self) -> Hashable:
        lora = self.lora.sha256 if self.lora is not None else None
        return self.control.size, _settings_key(self.inputs), lora


def _settings_key(inputs: InstantIDXLInput) -> Hashable:
    """What one pipeline call shares: everything but what each row carries (prompts, faces, keypoints, seeds,
    ip_adapter_scale and identitynet_strength)."""
    return (
        inputs.width,
        inputs.height,
        inputs.num_inference_steps,
        inputs.guidance_scale,
        inputs.scheduler,
        inputs.enhance_face_region,
        inputs.negative_prompt is None,
        inputs.lora_weights,
        inputs.lora_scale if inputs.lora_weights is not None else None,
        inputs.speed,
    )


class InstantIDXLPredictor(Predictor[InstantIDXLInput, InstantIDJob]):
    """A likeness of one person, placed by their facial keypoints, on the family's shared SDXL."""

    def setup(self) -> None:
        self.tuning = Tuning.from_settings(self.settings)
        self.base: SharedBase = shared_base(self.settings, xl_weights(self.settings))
        self.adapter_index = self.base.adapter_index(ADAPTER_NAME)
        source, subfolder = controlnet_location(self.settings)
        controlnet = load_model(IdentityControlNetModel, source, self.settings, subfolder=subfolder)
        self.pipe, self.fast, self.applied = family_pipeline(self.settings, self.tuning, self.base, controlnet)
        self.scheduler_config = self.pipe.scheduler.config
        on_cuda = resolve_device(self.settings.device).type == "cuda"
        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if on_cuda else ("CPUExecutionProvider",)
        self.faces = FaceAnalyzer(face_models_dir(self.settings), providers=providers)
        self.lora_cache = process_lora_cache(self.settings)
        self.embeddings_cache = process_tensor_file_cache("embeddings", self.settings.embeddings_cache_bytes)

    def batch_key(self, inputs: InstantIDXLInput) -> Hashable:
        return _settings_key(inputs)

    def saved_face(self, uri: str, ctx: PredictContext) -> tuple[np.ndarray, np.ndarray | None]:
        """The embedding and (if the file has them) keypoints of a ``face_embedding`` file."""
        try:
            tensor_file = load_tensor_file(
                uri,
                ctx,
                self.embeddings_cache,
                max_bytes=self.settings.embeddings_max_bytes,
                timeout_s=self.settings.lora_fetch_timeout_s,
                check=check_face_embedding_header,
                name="face_embedding",
            )
        except ValueError as exc:
            raise ValueError(f"face_embedding: {exc}") from None
        embedding = tensor_file.tensors[FACE_EMBEDDING].float().numpy()
        norm = float(np.linalg.norm(embedding))
        if not norm or not np.isfinite(norm):
            raise ValueError("face_embedding: the embedding is zero or not finite")
        kps = tensor_file.tensors.get(FACE_KPS)
        return embedding / norm, None if kps is None else kps.float().numpy()

    def identity(self, inputs: InstantIDXLInput, ctx: PredictContext) -> tuple[np.ndarray, np.ndarray]:
        """Whose face (the embedding) and where it goes (the keypoints), from the inputs."""
        kps: np.ndarray | None
        if inputs.face_embedding is not None:
            embedding, kps = self.saved_face(inputs.face_embedding, ctx)
        else:
            face: Face
            if inputs.face_image is not None:
                face = self.faces.face(ctx.load_image(inputs.face_image), "face_image")
            else:
                assert inputs.face_images is not None  # the schema requires one of the three
                face = self.faces.average([ctx.load_image(uri) for uri in inputs.face_images], "face_images")
            embedding, kps = face.embedding, face.kps
        if inputs.pose_image is not None:
            kps = self.faces.face(ctx.load_image(inputs.pose_image), "pose_image").kps
        return embedding.astype(np.float32), (DEFAULT_FRONTAL_KPS if kps is None else kps).astype(np.float32)

    def prepare(self, inputs: InstantIDXLInput, ctx: PredictContext) -> InstantIDJob:
        embedding, kps = self.identity(inputs, ctx)
        lora = None
        if inputs.lora_weights is not None:
            lora = fetch_lora(inputs.lora_weights, ctx, self.pipe, self.lora_cache, self.settings)
        return self.job(inputs, resolve_seed(inputs.seed, ctx), embedding, kps, lora)

    def job(
        self, inputs: InstantIDXLInput, seed: int, embedding: np.ndarray, kps: np.ndarray, lora: LoraWeights | None
    ) -> InstantIDJob:
        """The job of a face at ``kps``: its keypoint image and (enhance_face_region) its region, at the
        generation size."""
        size = self.tuning.generation_size((inputs.width, inputs.height))
        region = torch.from_numpy(face_region_mask(size, kps)).float()[None] if inputs.enhance_face_region else None
        return InstantIDJob(
            seed=seed,
            inputs=inputs,
            embedding=embedding,
            kps=kps,
            control=draw_kps(size, kps),
            region=region,
            lora=lora,
        )

    def warmup_job(self, size: tuple[int, int], steps: int, ctx: PredictContext) -> InstantIDJob:
        """A job for the compile warm-up (``worker.warmup``): a random face at the default place, at ``size``."""
        inputs = InstantIDXLInput(
            face_embedding=WARMUP_FACE_URL, width=size[0], height=size[1], num_inference_steps=steps, seed=0
        )
        embedding = np.random.default_rng(0).standard_normal(512).astype(np.float32)
        return self.job(inputs, 0, embedding / np.linalg.norm(embedding), DEFAULT_FRONTAL_KPS, None)

    def face_embeds(self, layout: list[tuple[InstantIDJob, int]], guided: bool) -> torch.Tensor:
        """``(rows, 1, 1, 512)``: each row's face embedding, after a row of zeros each with guidance (InstantID's
        unconditional face), laid out as the UNet's image prompts: one image of one token per row."""
        faces = torch.stack([torch.from_numpy(job.embedding) for job, _ in layout])
        rows_ = torch.cat([torch.zeros_like(faces), faces]) if guided else faces
        return rows_[:, None, None, :].to(device=self.pipe.device, dtype=self.pipe.unet.dtype)

    def run_pipeline(
        self, jobs: Sequence[InstantIDJob], layout: list[tuple[InstantIDJob, int]], step_callback: StepCallback
    ) -> Any:
        first = jobs[0].inputs
        width, height = jobs[0].control.size
        self.pipe.scheduler = SCHEDULERS[first.scheduler].from_config(self.scheduler_config)
        guided = first.guidance_scale > 1
        embeds = self.face_embeds(layout, guided)
        with torch.no_grad():
            tokens = adapter_projection(self.pipe.unet, self.adapter_index)(embeds[:, 0])
        masks = None
        if first.enhance_face_region:
            regions = torch.stack([job.region for job, _ in layout if job.region is not None])
            masks = for_guidance(regions, guided).to(self.pipe.device)
        with identity_applied(self.pipe.controlnet, tokens, masks):
            return self.pipe(
                prompt=[job.inputs.prompt for job, _ in layout],
                negative_prompt=None
                if first.negative_prompt is None
                else [job.inputs.negative_prompt for job, _ in layout],
                image=[job.control for job, _ in layout],
                ip_adapter_image_embeds=[embeds],
                controlnet_conditioning_scale=1.0,
                width=width,
                height=height,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                num_images_per_prompt=1,
                generator=generators(layout, self.pipe.device),
                callback_on_step_end=step_callback,
            ).images

    def generate(self, jobs: Sequence[InstantIDJob], step_callback: StepCallback) -> list[list[Output]]:
        layout = rows(jobs, lambda job: job.inputs.num_outputs)
        guided = jobs[0].inputs.guidance_scale > 1
        fast = self.fast if resolve_speed(jobs[0].inputs.speed, self.settings) is Speed.FAST else None
        dtype, device = self.pipe.unet.dtype, self.pipe.device
        identity = torch.tensor([[job.inputs.ip_adapter_scale] for job, _ in layout], dtype=dtype, device=device)
        ip_scales = role_row_scales([IPAdapterMode.FULL] * len(layout), identity)
        controlnet_scales = torch.tensor([job.inputs.identitynet_strength for job, _ in layout], dtype=dtype)
        with (
            adapter_selected(self.pipe.unet, self.adapter_index),
            fast_mode_applied(self.pipe, fast, guided, float8=jobs[0].lora is None),
            lora_applied(self.pipe, jobs[0].lora, jobs[0].inputs.lora_scale),
            row_scales_applied(
                self.pipe,
                {role: for_guidance(tensor, guided) for role, tensor in ip_scales.items()},
                for_guidance(controlnet_scales.to(device), guided),
            ),
        ):
            images = self.run_pipeline(jobs, layout, step_callback)
        return [
            self.job_outputs(job, [fit(image, (job.inputs.width, job.inputs.height)) for image in job_images])
            for job, job_images in split_images(images, jobs, lambda job: job.inputs.num_outputs)
        ]

    def job_outputs(self, job: InstantIDJob, images: list[Output]) -> list[Output]:
        """The images, then the face file where asked for: what ``face_embedding`` takes back."""
        if job.inputs.return_embeddings:
            images.append(
                safetensors_output(
                    EMBEDDINGS_NAME,
                    {FACE_EMBEDDING: torch.from_numpy(job.embedding), FACE_KPS: torch.from_numpy(job.kps)},
                    {"model": "kiln/instantid-xl"},
                )
            )
        return images
