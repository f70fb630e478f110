"""The engine's settings: queues, job lifetimes, worker health, models, the image index, image limits,
logs and the observe endpoints.

Environment variables prefixed CLIPBOT_ (or a .env file), the same names as ever. The chat
side's `bot.config.Settings` builds on this class, so one object still holds every setting;
engine/ only ever needs (and types against) this part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["EngineSettings", "split_list"]

_DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "clipbot"


def split_list(value: object) -> object:
    """`a, b,c` from the environment as a list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _expand_user(value: Path | None) -> Path | None:
    return value.expanduser() if value is not None else None


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPBOT_", env_file=".env", extra="ignore")

    # engine
    broker_url: str | None = Field(None, description="Redis URL; unset runs the embedded in-process engine")
    redis_url: str | None = Field(None, description="Redis for job records, events, blobs; defaults to broker_url")
    data_dir: Path = Field(_DEFAULT_DATA_DIR, description="where the embedded engine keeps state and output")
    job_timeout: float = Field(600.0, description="seconds a job may run before the requester gives up")
    queue_timeout: float = Field(120.0, description="seconds a job may wait for a worker before it is cancelled")
    visibility_timeout: int = Field(7200, description="Redis redelivery timeout; must exceed the longest job")
    blob_ttl: int = Field(86400, description="seconds uploaded and generated images are kept at most")
    worker_concurrency: int = Field(1, description="worker child processes (1 per GPU is usual)")
    worker_queues: Annotated[list[str], NoDecode] = Field(
        [], description="queues a worker consumes; empty means every queue the plugins declare")
    # engine: job lifetime and worker health
    job_ttl: int = Field(3600, description="seconds a finished job's record and events are kept")
    max_attempts: int = Field(3, ge=1, description="deliveries of one job before it fails (a job that "
                              "kills its worker every time)")
    worker_dead_after: float = Field(60.0, gt=0, description="seconds without a heartbeat after which a worker "
                                     "process counts as dead: its jobs are queued again, a hung child replaced")
    worker_torch_threads: int = Field(0, ge=0, description="torch threads per worker child; 0: CPU cores / children")

    # models
    clip_model: str = Field("ViT-B-32:laion2b_s34b_b79k", description="ARCH:TAG, ARCH:/path/file, or a preset")
    vqgan_model: str = Field("imagenet_f16_16384", description="official VQGAN name, CONFIG.yaml:CKPT, or a preset")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    clip_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="what computes CLIP embeddings: torch (eager, the reference), onnx (ONNX Runtime, "
        "CPU only, the `cpu` extra; exported and checked against torch once per model), or auto (onnx on a CPU "
        "where it is installed and its export passed the check, torch otherwise)")
    model_cache: Path | None = Field(None, description="model weights cache; defaults to data_dir/models")

    # image index (/search)
    index_url: str | None = Field(
        None, description="image index: empty = embedded (SQLite + float16 matrices under data_dir/index), "
        "sqlite:///DIR, or postgresql://... (pgvector >= 0.8)")

    # OCR: the words on pictures, read as they are indexed (engine/models/ocr.py)
    ocr: bool = Field(True, description="read the text in pictures as they are indexed; off: nowhere (admins also "
                      "switch it per space with /index ocr on|off)")
    ocr_langs: Annotated[list[str], NoDecode] = Field(
        ["en", "zh"], description="languages OCR reads: the bundled model reads en and zh (Simplified Chinese); "
        "others need ocr_rec_model")
    ocr_rec_model: Path | None = Field(None, description="a PP-OCR recognition model (ONNX) for other languages")
    ocr_rec_keys: Path | None = Field(None, description="its character list, when the model does not carry one")

    # images
    max_image_bytes: int = Field(25 * 1024 * 1024, description="largest upload accepted, in bytes")
    max_image_pixels: int = Field(40_000_000, description="largest image accepted, in pixels")

    # fair shares (engine.quotas, engine.fair); admins change the limits per space with /quota
    long_queues: Annotated[list[str], NoDecode] = Field(
        ["gpu-long"], description="queues of long jobs (the long_jobs limit counts them)")
    fair_queues: Annotated[list[str], NoDecode] = Field(
        ["gpu-long"], description="queues served round-robin between users (Redis only)")
    fair_ahead: int = Field(1, ge=1, description="messages a fair queue hands the broker ahead of the workers")
    quota_long_jobs: int = Field(2, ge=0, description="long jobs a user may have queued or running; 0: no limit")
    quota_quick_jobs: int = Field(4, ge=0, description="quick jobs a user may have queued or running; 0: no limit")
    quota_user_gpu_seconds: float = Field(3600.0, ge=0, description="GPU-seconds a user may use per UTC day; 0: no limit")
    quota_space_gpu_seconds: float = Field(0.0, ge=0, description="GPU-seconds a server/workspace may use per day")
    quota_channel_gpu_seconds: float = Field(0.0, ge=0, description="GPU-seconds a channel may use per day")

    log_level: str = Field("INFO", description="logging level")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object per line "
                                                "(time, level, logger, message, job_id)")

    # observability (engine.observe): /metrics, /healthz, /readyz
    observe_port: int | None = Field(None, ge=0, le=65535, description="port of the metrics and health "
                                     "endpoints; unset: 9108 for clipbot run, 9109 for clipbot worker; 0: off")
    observe_host: str = Field("127.0.0.1", description="address the metrics and health endpoints listen on "
                              "(0.0.0.0 in containers)")

    _split_queues = field_validator("worker_queues", "long_queues", "fair_queues", "ocr_langs",
                                    mode="before")(split_list)
    _unset_port = field_validator("observe_port", mode="before")(lambda v: None if v == "" else v)
    # `CLIPBOT_DATA_DIR=~/...` (as .env.example writes it): no shell expands ~ in a .env file.
    _home = field_validator("data_dir", "model_cache", "ocr_rec_model", "ocr_rec_keys", mode="after")(_expand_user)

    @property
    def state_redis_url(self) -> str | None:
        return self.redis_url or self.broker_url

    @property
    def models_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"

    @property
    def embedded(self) -> bool:
        return not self.broker_url
