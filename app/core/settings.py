"""Service settings, read from ``DR4SR_*`` environment variables.

The defaults describe the embedded mode (one laptop, no Redis, no
PostgreSQL): everything lives under ``DR4SR_DATA_DIR`` (``var/``). Setting
``DR4SR_DATABASE_URL``, ``DR4SR_BROKER_URL`` and ``DR4SR_STORAGE_URL`` switches
the same code to the production topology.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DR4SR_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Root of every embedded-mode file.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite under data_dir. "
        "Production: postgresql+psycopg://user@host/db",
    )
    broker_url: str | None = Field(
        None, description="Celery broker; default is kombu's filesystem transport under data_dir."
    )
    storage_url: str | None = Field(
        None,
        description="Artifact store: a local folder (default data_dir/artifacts) or any fsspec URL.",
    )
    work_dir: Path | None = Field(
        None, description="Workers' local scratch (default data_dir/work)."
    )
    api_key_file: Path | None = Field(None, description="Where `dr4sr serve` writes the local key.")

    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = Field(
        1, ge=1, description="`dr4sr api` processes sharing the port (about one per core)."
    )
    migrate_on_start: bool = True

    max_upload_bytes: int = Field(1024 * MiB, gt=0, description="Uploads above this get 413.")
    sync_validation_max_bytes: int = Field(
        16 * MiB,
        ge=0,
        description="Uploads up to this size are validated inside the request; "
        "larger ones by a validation job.",
    )
    upload_chunk_bytes: int = Field(1 * MiB, gt=0)
    max_decompressed_bytes: int = Field(
        4 * 1024 * MiB,
        gt=0,
        description="A gzipped upload (or a Parquet file's data) may expand to at most this.",
    )
    max_compression_ratio: float = Field(
        100.0,
        gt=1,
        description="Gzip/Parquet data expanding more than this many times its stored size is "
        "refused as a decompression bomb (checked once it exceeds 16 MiB).",
    )
    max_line_bytes: int = Field(
        1 * MiB, gt=0, description="Text uploads with a longer line are refused (422)."
    )

    # Per-principal resource limits.
    max_active_jobs_per_principal: int = Field(
        8, ge=1, description="Queued + running regenerate/train/compare jobs; beyond it 429."
    )
    max_stored_bytes_per_principal: int = Field(
        100 * 1024 * MiB,
        gt=0,
        description="Bytes stored for a principal (uploads and results); uploads beyond it 413.",
    )

    auth_cache_s: float = Field(
        10.0,
        ge=0,
        description="Seconds an authenticated key is remembered per API process (0: off); "
        "a revoked key keeps working for at most this long.",
    )
    request_threads: int = Field(
        20,
        ge=1,
        description="Threads running the API's blocking work (database calls); more requests "
        "wait in the event loop.",
    )
    db_pool_size: int = Field(
        24,
        ge=1,
        description="PostgreSQL connections kept open per API process: at least request_threads, "
        "so a busy API never opens and closes connections per request.",
    )
    db_max_overflow: int = Field(8, ge=0, description="Extra connections allowed at peaks.")

    # Ordering enforced below: a message must stay invisible longer than the
    # hard limit, or the broker would hand a still-running job to a second worker.
    soft_time_limit_s: int = Field(12 * 3600, gt=0)
    hard_time_limit_s: int = Field(12 * 3600 + 600, gt=0)
    visibility_timeout_s: int = Field(13 * 3600, gt=0)

    lease_s: float = Field(60.0, gt=0, description="A job's lease; renewed every lease_s / 3.")
    max_attempts: int = Field(3, ge=1, description="Deliveries of one job before it is failed.")
    retry_backoff_s: float = Field(15.0, ge=0)
    progress_interval_s: float = Field(
        0.5, ge=0, description="Minimum seconds between job-row writes."
    )
    auto_device_queue: Literal["cpu", "gpu"] = Field(
        "cpu", description="Queue for jobs whose device is 'auto' (compose sets 'gpu')."
    )
    worker_queues: str = "cpu,gpu"
    broker_polling_interval_s: float = Field(0.5, gt=0, description="Embedded transport polling.")
    checkpoint_sync_interval_s: float = Field(
        30.0,
        ge=0,
        description="A training job copies its resumable checkpoint to the artifact store at "
        "most this often (0: every epoch), so a redelivered job resumes instead of restarting.",
    )
    requeue_queued_after_s: float = Field(
        1800.0,
        gt=0,
        description="A job still queued after this long is enqueued again (a lost broker "
        "message must not strand it; duplicates are turned away by the lease).",
    )

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Settings:
        if not (self.soft_time_limit_s < self.hard_time_limit_s < self.visibility_timeout_s):
            raise ValueError(
                "time limits must satisfy soft_time_limit_s < hard_time_limit_s < "
                f"visibility_timeout_s, got {self.soft_time_limit_s} / {self.hard_time_limit_s} / "
                f"{self.visibility_timeout_s}"
            )
        if self.lease_s >= self.visibility_timeout_s:
            raise ValueError("lease_s must be shorter than visibility_timeout_s")
        return self

    # -- resolved values ---------------------------------------------------
    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'dr4sr.sqlite'}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def broker_folder(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost/"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.resolved_data_dir / "artifacts")

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.resolved_data_dir / "work").expanduser().resolve()

    @property
    def resolved_api_key_file(self) -> Path:
        return (self.api_key_file or self.resolved_data_dir / "api-key").expanduser().resolve()

    @property
    def queues(self) -> list[str]:
        names = [q.strip() for q in self.worker_queues.split(",") if q.strip()]
        unknown = sorted(set(names) - {"cpu", "gpu"})
        if unknown or not names:
            raise ValueError(f"worker_queues must name cpu and/or gpu, got {self.worker_queues!r}")
        return names


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
