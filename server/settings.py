"""All server settings: one pydantic-settings class, environment variables prefixed SEGSWAP_.

The CLI's flags override the same fields, so `SEGSWAP_PORT=9000` and `--port 9000` mean the same.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipelines import paths
from pipelines.engines.diffusion.options import VAE_TILING_ABOVE_PIXELS, DiffusionOptions
from pipelines.models.model_sets import COMPOSITE, SETS
from pipelines.placement.cache import OBJECT_CACHE_BYTES
from server.serving.priority import BATCH_EVERY


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGSWAP_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    engine: Literal["auto", "composite", "diffusion"] = "auto"
    data_dir: Path = Field(default_factory=paths.data_dir, description="keys, credits and v2 jobs (platform default)")
    weights_dir: Path = Field(
        default_factory=paths.weights_dir, description="model sets (default: weights/ in data_dir)"
    )
    model_set: str | None = Field(
        None,
        description=f"model set to load ({', '.join(SETS)}); default: the first complete one in that order. "
        f"Several, comma-separated ({next(iter(SETS))},{COMPOSITE}), serve them side by side, each on its own "
        "workers and queue, picked per request (`model_set`); the first is the default",
    )
    memory_budget_bytes: int | None = Field(
        None,
        ge=0,
        description="memory the model sets may take on each device, instead of what the device has free at start",
    )
    lazy_load: bool = Field(
        False,
        description="load only the default model set at start, each other one on its first request, unloading "
        "the least recently used idle sets to make room",
    )
    ip_adapter: Literal["plus", "plain"] = "plus"
    device: str = Field("auto", description="torch device: auto, cuda, cuda:1, mps, cpu")
    segmenter: Literal["auto", "grabcut", "sam2"] = Field(
        "auto",
        description="selection by box, points or words: SAM 2 (with OWLv2 for words) when its sets are in "
        "weights_dir, else GrabCut (auto); or force one",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cpu_offload: bool = Field(False, description="keep models in CPU memory, move each to the GPU when used")
    vae_tiling: bool = Field(False, description="decode in tiles (less GPU memory for large crops)")
    vae_tiling_above_pixels: int = Field(
        VAE_TILING_ABOVE_PIXELS,
        ge=0,
        description="decode in tiles when the processed crop has more pixels than this (crop-and-stitch keeps it "
        "at the model's native area, so the default never triggers on the engine's own crops)",
    )
    vae_upcast: bool | Literal["auto"] = Field(
        "auto", description="the VAE encodes in float32 (SDXL); auto: only in float16, where its VAE overflows"
    )
    sdpa: bool = Field(True, description="scaled_dot_product_attention everywhere (false: classic attention)")
    fuse_qkv: bool = Field(True, description="one q/k/v matmul in self-attention (IP-Adapter layers stay unfused)")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="UNet/VAE in channels-last; auto: off (PyTorch's CUDA GroupNorm does not keep the layout)"
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the UNet's transformer blocks (compiles during warm-up); auto: on CUDA"
    )
    fp8: bool = Field(
        False,
        description="the denoiser's linear layers in float8 (torchao; Ada/Hopper GPUs only, refused elsewhere)",
    )
    embed_cache_size: int = Field(
        64, ge=0, description="LRU entries of IP-Adapter image and prompt embeddings (0: no cache)"
    )
    object_cache_bytes: int = Field(
        OBJECT_CACHE_BYTES, ge=0, description="bytes of cut-outs and reference images kept for recent objects (0: none)"
    )
    few_step: bool = Field(
        False, description="SD sets: the LCM-LoRA fused in, 4-8 steps without guidance (FLUX.2 klein: always 4)"
    )
    step_cache: bool = Field(
        False,
        description="reuse slowly changing model features between steps (DeepCache on SD, TaylorSeer on "
        "FLUX.2): faster, slightly different images",
    )
    step_cache_interval: int = Field(3, ge=2, description="step cache: the whole model runs once every this many steps")
    output_metadata: bool = Field(
        True, description="every output carries what made it (parameters, input sha256s, seed, engine, versions)"
    )
    c2pa_cert: Path | None = Field(
        None, description="PEM certificate chain (signer first) to sign every output's C2PA content credentials"
    )
    c2pa_key: Path | None = Field(None, description="PEM private key of that certificate", repr=False)
    c2pa_alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = Field(
        "es256", description="the C2PA signing algorithm (the key's kind)"
    )
    c2pa_tsa_url: str | None = Field(None, description="RFC 3161 timestamp authority for the C2PA signature")
    watermark: bool = Field(
        False, description="an invisible watermark in every output (SDXL's DWT-DCT; changes every pixel slightly)"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    keys_file: Path | None = Field(
        None,
        description="TOML key file managed by `segswap keys` (hashes, limits); default: keys.toml in data_dir "
        "when it exists",
    )
    credits_db: Path | None = Field(None, description="SQLite credit ledger (default: credits.sqlite3 in data_dir)")
    credit_cost: int = Field(1, ge=0, description="credits one delivered image costs (keys with a balance)")

    max_body_bytes: int = Field(40 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest decoded image accepted, in pixels")
    fetch_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest image fetched from a URL")
    fetch_timeout_s: float = Field(15.0, gt=0, description="total time allowed to fetch one image URL")
    fetch_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts or networks (CIDR), comma-separated, that image URLs may reach though not public",
    )
    log_level: str = "info"

    max_queue: int = Field(32, ge=1, description="jobs that may wait for a worker; beyond it, 429")
    batch_every: int = Field(
        BATCH_EVERY,
        ge=1,
        description="interactive jobs (v1, OpenAI route, v2 priority=interactive) go before batch ones (v2's default), "
        "but after this many interactive starts in a row while batch work waits, the oldest batch job starts",
    )
    request_timeout_s: float = Field(300.0, gt=0, description="deadline of a request from arrival; past it, 504")
    drain_grace_s: float = Field(120.0, ge=0, description="how long SIGTERM waits for queued and running jobs")
    jobs_dir: Path | None = Field(None, description="v2 job store, SQLite + files (default: jobs/ in data_dir)")
    database_url: str | None = Field(
        None,
        repr=False,
        description="PostgreSQL URL (postgresql://user:pass@host:5432/segswap) for v2 job rows and credits, shared by "
        "replicas (which must also share jobs_dir); empty: SQLite files (one server)",
    )
    job_retention_s: float = Field(7 * 24 * 3600, gt=0, description="how long v2 jobs and results are kept")
    delete_on_fetch: bool = Field(False, description="delete a v2 job's files once its output has been fetched")
    max_stored_jobs_per_key: int = Field(1000, ge=1, description="v2 jobs one key may keep stored; beyond, 429")
    max_stored_bytes_per_key: int = Field(
        2 * 1024**3, ge=1, description="bytes of v2 inputs and results one key may keep stored; beyond, 429"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="time a client has to send a request's headers")
    body_timeout_s: float = Field(60.0, gt=0, description="time a client has to send a request's body")
    job_timeout_s: float = Field(3600.0, gt=0, description="how long a dispatched v2 job may wait for a worker")
    max_streams_per_key: int = Field(
        16, ge=1, description="v2 event streams (GET /v2/requests/{id}/events) one key may hold open; beyond, 429"
    )
    max_pending_jobs: int = Field(10_000, ge=1, description="v2 jobs queued or running; beyond it, submits get 429")
    public_base_url: str | None = Field(None, description="base of the URLs v2 answers with, behind a proxy")
    webhook_backoff_scale: float = Field(
        1.0, ge=0, description="multiplies the webhook retry delays (1, 2, 4, 8, 16 s)"
    )
    devices: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="devices to run workers on, one worker each (e.g. cuda:0,cuda:1); default: every GPU, else one CPU",
    )

    @field_validator("model_set")
    @classmethod
    def _known_model_sets(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [name.strip() for name in value.split(",") if name.strip()]
        known = [*SETS, COMPOSITE]
        for name in names:
            if name not in known:
                raise ValueError(f"unknown model set {name!r}; known: {', '.join(known)}")
        if len(set(names)) != len(names):
            raise ValueError(f"model set listed twice in {value!r}; name each once")
        return ",".join(names) or None

    @model_validator(mode="after")
    def _composite_engine_serves_composite(self) -> Settings:
        if self.engine == "composite" and len(self.model_set_names) > 1:
            raise ValueError(
                "--engine composite serves only the composite set; for several sets use --engine auto "
                f"(composite may be one of them: --model-set {self.model_set_names[0]},{COMPOSITE})"
            )
        return self

    @field_validator("api_keys", "fetch_allow", "devices", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @model_validator(mode="after")
    def _keys_file_in_data_dir(self) -> Settings:
        """The key file `segswap keys add` writes by default, once it exists (before the check below)."""
        if self.keys_file is None and self.default_keys_file.is_file():
            self.keys_file = self.default_keys_file
        return self

    @model_validator(mode="after")
    def _no_open_server_without_keys(self) -> Settings:
        if not self.auth_required and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys: set SEGSWAP_API_KEYS "
                "(comma-separated) or SEGSWAP_KEYS_FILE, or bind to 127.0.0.1"
            )
        return self

    @model_validator(mode="after")
    def _c2pa_cert_and_key_together(self) -> Settings:
        if (self.c2pa_cert is None) != (self.c2pa_key is None):
            raise ValueError("C2PA signing needs both SEGSWAP_C2PA_CERT and SEGSWAP_C2PA_KEY (or neither)")
        return self

    @model_validator(mode="after")
    def _state_in_data_dir(self) -> Settings:
        self.credits_db = self.credits_db or self.data_dir / "credits.sqlite3"
        self.jobs_dir = self.jobs_dir or self.data_dir / "jobs"
        return self

    @property
    def default_keys_file(self) -> Path:
        """Where `segswap keys` writes when SEGSWAP_KEYS_FILE is not set."""
        return self.data_dir / "keys.toml"

    @property
    def model_set_names(self) -> list[str]:
        """The sets named by `model_set`, the default first; empty when none is named."""
        return self.model_set.split(",") if self.model_set else []

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys) or self.keys_file is not None

    def diffusion_options(self, device: str | None = None) -> DiffusionOptions:
        return DiffusionOptions(
            device=device or self.device,
            dtype=self.dtype,
            cpu_offload=self.cpu_offload,
            vae_tiling=self.vae_tiling,
            vae_tiling_above_pixels=self.vae_tiling_above_pixels,
            vae_upcast=None if self.vae_upcast == "auto" else self.vae_upcast,
            sdpa=self.sdpa,
            fuse_qkv=self.fuse_qkv,
            channels_last=None if self.channels_last == "auto" else self.channels_last,
            compile=None if self.compile == "auto" else self.compile,
            fp8=self.fp8,
            embed_cache_size=self.embed_cache_size,
            object_cache_bytes=self.object_cache_bytes,
            few_step=self.few_step,
            step_cache=self.step_cache,
            step_cache_interval=self.step_cache_interval,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
