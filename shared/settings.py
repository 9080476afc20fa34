"""Kiln settings, read from the environment (prefix ``KILN_``) and an optional ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.security.tokens import bootstrap_tokens, tenant_of, token_digest

__all__ = ["Settings", "get_settings", "tenant_of", "token_digest"]


class HardwareSku(BaseModel):
    """A kind of GPU Kiln's workers run on, as ``GET /v1/hardware`` lists it and deployments name it."""

    sku: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    name: str = Field(min_length=1, max_length=200)


class Settings(BaseSettings):
    """Every knob of the API and the workers. One instance per process, via ``get_settings()``."""

    model_config = SettingsConfigDict(env_prefix="KILN_", env_file=".env", extra="ignore")

    # Where local state lives (weights cache, generated secrets) when paths are not set explicitly.
    data_dir: Path = Path(".kiln")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis behind Sentinel: "host:port,host:port,..." of the sentinels; when set, every Redis user finds
    # the primary named redis_sentinel_master through them (and follows it after a failover). The
    # password and database number still come from redis_url (its host is then unused).
    redis_sentinels: str = ""
    redis_sentinel_master: str = "kiln"
    # The sentinels' own password (their requirepass), when they have one: the compose ha profile and
    # the Kubernetes ha overlay give them Redis's.
    redis_sentinel_password: str = ""
    # Acknowledged means replicated: a create answers 201 (and a terminal transition records its
    # webhook) only once this many replicas confirm it (WAIT), within redis_replica_ack_timeout_s;
    # otherwise 503 with Retry-After. 0: no wait (a single Redis, or asynchronous replication).
    redis_min_replicas_ack: int = Field(default=0, ge=0)
    redis_replica_ack_timeout_s: float = Field(default=1.0, gt=0)

    # The bootstrap tokens, comma-separated; each token is its own tenant. An entry is "[name=]token" or
    # "[name=]sha256:<hex>" (the token's SHA-256, so settings need not contain secrets). More tokens,
    # each with its own limits, are created and revoked at run time: `kiln tokens --help` (shared.security.tokens).
    api_token: str = ""
    # Largest request body the API reads (uploads to /v1/files have their own cap).
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Absolute base URL clients reach the API at; taken from the request when empty.
    public_url: str = ""
    predictions_page_size: int = Field(default=100, ge=1, le=1000)
    # A bare "Prefer: wait" waits this long: under the official Python client's 30 s read timeout.
    prefer_wait_default_s: int = Field(default=25, ge=1, le=60)
    # What GET /v1/hardware lists, and the SKUs a deployment may name (JSON list of {sku, name}).
    hardware: list[HardwareSku] = [HardwareSku(sku="gpu", name="GPU")]
    # Most SSE streams and Prefer: wait creates open at once per token, across API processes (429 beyond).
    max_open_streams_per_tenant: int = Field(default=20, ge=1)
    # Longest prompt / negative_prompt, in characters (422 beyond): the text encoders read 77 tokens.
    max_prompt_chars: int = Field(default=10_000, ge=1)
    # Threads that run creates (validation, image staging, the store write), apart from the ones reads use,
    # and the most of them one token holds at once: a token's slow image URLs never hold another's
    # requests (api.lanes). Further creates of that token wait for its own threads.
    intake_threads: int = Field(default=64, ge=1)
    intake_threads_per_token: int = Field(default=16, ge=1)
    # Per-token token bucket: sustained requests per second and burst size.
    rate_limit_per_s: float = Field(default=50.0, gt=0)
    rate_limit_burst: int = Field(default=600, ge=1)
    # Batch create: most items inline in one POST /v1/batches or POST /v1/predictions/batch.
    batch_max_items: int = Field(default=10_000, ge=1)
    # Most lines of a batch's input_file (POST /v1/batches with a Files-API URL of a JSONL file).
    batch_file_max_lines: int = Field(default=100_000, ge=1)
    # Kiln's dispatcher keeps this many /v1/batches items waiting in Celery per model family and
    # releases the rest round-robin across tenants as workers take them: a tenant's first item waits
    # for at most the running job and this many others. Set it to the family's worker count.
    dispatch_ahead: int = Field(default=1, ge=1, le=1000)
    # Start a batch-intake process (``api.intake.batch_pool``) when the API starts, so the first
    # ``POST /v1/batches`` does not wait about a second for one to spawn.
    batch_intake_warm: bool = True
    # A tenant's batch items beyond its first this-many queued predictions go to a lower priority
    # step, so another tenant's batch waits for at most this many of them.
    batch_heavy_after: int = Field(default=1000, ge=1)
    # Backpressure: most queued (not yet started) predictions per tenant (429 beyond) and overall (503 beyond).
    max_queued_per_tenant: int = Field(default=100_000, ge=1)
    max_queued_total: int = Field(default=1_000_000, ge=1)
    # Uploaded files (Files API): size cap and how long they are kept.
    file_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    file_retention_s: int = Field(default=24 * 3600, ge=60)
    # Uploads under way at once per token, and the threads that store them (api.lanes): one token's
    # uploads never hold another's, nor the threads reads run on. Further uploads of a token wait, unread.
    uploads_per_token: int = Field(default=2, ge=1)
    upload_threads: int = Field(default=8, ge=1)
    # Threads on which requests wait for S3 (downloads of outputs, stored inputs and files; deletes of data and
    # files), apart from the ones reads use, and the most of them one token (the data's owner) holds at once
    # (api.lanes): a stalled S3 or one token's many downloads hold only these, never another's reads.
    storage_threads: int = Field(default=64, ge=1)
    storage_threads_per_token: int = Field(default=16, ge=1)

    s3_endpoint_url: str = "http://127.0.0.1:8333"
    # Endpoint used when presigning URLs for outside consumers (SigV4 signs the host).
    s3_public_endpoint_url: str = ""
    s3_access_key: str = "kiln"
    s3_secret_key: str = "kiln-secret-key"
    s3_region: str = "us-east-1"
    s3_bucket: str = "kiln"

    # Weights: "tiny" builds small random-weight pipelines locally; "full" loads real weights;
    # "random-full" builds the full-size architectures with random weights (GPU timing without downloads).
    weights_profile: Literal["tiny", "full", "random-full"] = "tiny"
    weights_dir: Path | None = None
    sd2_depth2img_weights: str = "stabilityai/stable-diffusion-2-depth"
    sdxl_base_weights: str = "stabilityai/stable-diffusion-xl-base-1.0"
    # fp16-safe SDXL VAE, used on CUDA (the stock VAE overflows in fp16).
    sdxl_vae_fp16_weights: str = "madebyollin/sdxl-vae-fp16-fix"
    controlnet_depth_xl_weights: str = "diffusers/controlnet-depth-sdxl-1.0"
    controlnet_openpose_xl_weights: str = "thibaud/controlnet-openpose-sdxl-1.0"
    ip_adapter_weights: str = "h94/IP-Adapter"
    annotators_weights: str = "lllyasviel/Annotators"
    # kiln/instantid-xl (non-commercial weights: served only with allow_noncommercial_models): the InstantID
    # ControlNet (ControlNetModel/) and adapter (ip-adapter.bin), and InsightFace's antelopev2 face models.
    instantid_weights: str = "InstantX/InstantID"
    insightface_weights: str = "DIAMONIK7777/antelopev2"
    # Serve models whose weights are licensed for non-commercial research only (kiln/instantid-xl).
    allow_noncommercial_models: bool = False
    # "auto" picks CUDA when available, else CPU.
    device: str = "auto"

    # Image inputs and outputs.
    max_image_side: int = Field(default=1024, ge=64)
    image_fetch_timeout_s: float = Field(default=15.0, gt=0)
    image_fetch_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # At most what Pillow decodes at all (twice its MAX_IMAGE_PIXELS): a larger cap would still refuse images
    # under it, as decompression bombs.
    image_max_pixels: int = Field(default=40_000_000, ge=4096, le=178_956_970)
    # Fetch image and LoRA URLs on loopback, private-use and unique-local addresses (local development
    # only; link-local and the other special-purpose ranges stay refused: shared.security.ssrf).
    image_fetch_allow_private: bool = False
    image_fetch_max_redirects: int = Field(default=5, ge=0)

    # LoRA weights per request (lora_weights of the XL models): the largest file a worker fetches, how
    # long that may take, and the bytes of parsed LoRAs a worker keeps in memory (LRU by content hash).
    lora_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    lora_fetch_timeout_s: float = Field(default=300.0, gt=0)
    lora_cache_bytes: int = Field(default=4 * 1024 * 1024 * 1024, ge=0)
    # Embedding files given as inputs (face_embedding, ip_embeddings): the largest file taken, and the
    # bytes of parsed ones a worker keeps in memory (LRU by content hash).
    embeddings_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    embeddings_cache_bytes: int = Field(default=256 * 1024 * 1024, ge=0)

    # A running prediction's lease, renewed by its worker's heartbeat; when it lapses the
    # prediction is requeued, up to max_attempts runs in all.
    lease_s: float = Field(default=30.0, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    # Longest a prediction may run, per model ("owner/name": seconds), and for models not listed.
    prediction_time_limit_s: float = Field(default=1800.0, gt=0)
    model_time_limits_s: dict[str, float] = {}
    # On SIGTERM a worker finishes its prediction within this long, else hands it back to the queue.
    shutdown_grace_s: float = Field(default=60.0, ge=0)
    # Tests only: a prediction whose prompt is "step-gate:<name>" waits after its first step while
    # that gate is closed (worker.step_gates), so tests never use a step count as a stopwatch.
    step_gates: bool = False
    # Inputs and outputs are deleted this long after a prediction finishes (Replicate: 1 hour).
    retention_s: int = Field(default=3600, ge=1)
    # The record itself (status, timestamps, metrics, error), its webhook state and its place in the
    # tenant's list are deleted this long after it finishes (GET then answers 404); never before retention_s.
    record_retention_s: int = Field(default=30 * 24 * 3600, ge=1)
    # The janitor (retention and record expiry, in every worker process) runs at least this often.
    janitor_interval_s: float = Field(default=10.0, gt=0)
    # Image inputs larger than this (as sent: a data URI's characters) are stored in S3 with their
    # prediction; the record keeps a reference, so a queued prediction costs Redis a few KiB.
    inline_input_max_bytes: int = Field(default=16 * 1024, ge=0)
    # Uploads to S3 are retried this many times, with exponential backoff, before the prediction fails.
    storage_attempts: int = Field(default=5, ge=1)
    # Webhooks are signed with a secret per tenant (generated, kept in Redis). After a rotation the
    # old secret signs too, beside the new one, for this long, so receivers switch without losing events.
    webhook_secret_overlap_s: float = Field(default=24 * 3600, ge=0)
    # Signs output URLs (capability links that work without the Authorization header); generated when empty.
    url_signing_secret: str = ""
    # How long a signed output URL works (every GET, list and webhook renders a fresh one); never
    # longer than retention_s. The owner's token fetches the file without one.
    output_url_ttl_s: int = Field(default=3600, ge=10)
    # Allow webhooks to loopback, private-use and unique-local addresses: local development and tests only.
    webhook_allow_private: bool = False
    # The whole of one attempt, connect to answer (``shared.security.ssrf.Deadline``); at most half the
    # 60 s an attempt's claim lasts (``shared.webhooks.outbox.CLAIM_LEASE_S``), so no attempt outlives it.
    webhook_timeout_s: float = Field(default=15.0, gt=0, le=30)
    # Webhook attempts one tenant may have under way at once, across the webhook workers: a tenant whose
    # receivers are slow holds no more threads than this, and the other tenants' webhooks keep going. Its
    # further deliveries wait in line, each woken as one of its attempts ends.
    webhook_sending_per_tenant: int = Field(default=4, ge=1)
    # Delays between attempts of a terminal event (Svix-like: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h).
    webhook_retry_schedule_s: list[float] = [5, 300, 1800, 7200, 18000, 36000]
    webhook_throttle_ms: int = Field(default=500, ge=0)

    # Celery: must exceed the longest prediction, or Redis redelivers a running job.
    visibility_timeout_s: int = Field(default=4 * 3600, ge=60)

    # Observability. "json": one JSON object per log line, with the prediction_id being worked on
    # (what the container images use); "text": plain lines for a terminal.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # A Celery worker serves its Prometheus metrics on this port (0: off); the API serves GET /metrics.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # The address that port listens on: every interface in a container, loopback on a laptop.
    worker_metrics_host: str = "0.0.0.0"

    # GPU throughput (docs/benchmarks.md). A knob left unset (None) is on for CUDA and off elsewhere.
    # Micro-batching: queued predictions of one model with the same settings run as one pipeline call
    # of up to this many (unset: 4 on CUDA, 1 elsewhere), gathered for at most batch_window_ms.
    max_batch_size: int | None = Field(default=None, ge=1, le=64)
    batch_window_ms: float = Field(default=50.0, ge=0, le=1000)
    # Fetch, decode and preprocess the next queued prediction's inputs while the GPU denoises.
    prefetch: bool | None = None
    # Upload outputs (then complete the prediction) in a side thread while the next job starts.
    async_upload: bool | None = None
    # Torch-side: channels_last memory format, fused QKV projections, half precision on CUDA.
    channels_last: bool | None = None
    fuse_qkv: bool | None = None
    cuda_dtype: Literal["float16", "bfloat16"] = "float16"
    # torch.compile of the UNet/ControlNet (off unless set: max-autotune takes minutes per shape),
    # warmed up at worker start for every size bucket; snapping sizes to buckets follows it by default.
    torch_compile: bool = False
    compile_mode: str = "max-autotune"
    compile_backend: str = "inductor"
    # Each module compiled whole: a graph break is an error when first traced (a call that fails), not a
    # module run in pieces; off lets a module with a break (a newer diffusers, say) run, partly eager.
    compile_fullgraph: bool = True
    snap_to_buckets: bool | None = None
    # Compile every size bucket at worker start (batch 1 and max_batch_size); unset: on with torch_compile.
    compile_warmup: bool | None = None
    size_buckets: str = "1024x1024,1152x896,896x1152,1216x832,832x1216,1344x768,768x1344,768x768,512x512"
    # torch.compile cache artifacts (mega-cache) loaded before warm-up and saved after; empty: none kept.
    compile_cache_dir: Path | None = None
    # The opt-in fast mode (models/kit/fast_mode.py): the speed of predictions that leave ``speed`` out,
    # what "fast" applies, and how many steps share one computation of the UNet's deep features.
    speed_default: Literal["quality", "fast"] = "quality"
    fast_components: str = "controlnet_cond_only,feature_reuse,float8"
    fast_reuse_interval: int = Field(default=3, ge=1, le=10)

    @property
    def token_digests(self) -> list[str]:
        """SHA-256 hex digests of the bootstrap tokens (``KILN_API_TOKEN``)."""
        return [info.digest for info in bootstrap_tokens(self.api_token)]

    def time_limit_s(self, model_ref: str) -> float:
        return self.model_time_limits_s.get(model_ref, self.prediction_time_limit_s)

    @property
    def resolved_weights_dir(self) -> Path:
        return self.weights_dir if self.weights_dir is not None else self.data_dir / "weights"


@lru_cache
def get_settings() -> Settings:
    return Settings()
