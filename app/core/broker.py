"""The Celery application shared by the API (which enqueues by task name and
pings the broker for /readyz) and the workers (which run :mod:`workers.tasks`).

Embedded mode uses kombu's filesystem transport under ``DR4SR_DATA_DIR`` so
no Redis is needed; production sets ``DR4SR_BROKER_URL=redis://...``. The
task code is the same in both.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from app.core.settings import Settings, get_settings


def broker_transport_options(settings: Settings) -> dict:
    if settings.embedded_broker:
        folder = settings.broker_folder
        queue_dir = folder / "queue"
        control_dir = folder / "control"
        for d in (queue_dir, control_dir):
            d.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "control_folder": str(control_dir),
            "polling_interval": settings.broker_polling_interval_s,
        }
    # Redis re-delivers an unacknowledged message after the visibility
    # timeout; it must outlast the hard time limit or a running job would be
    # handed to a second worker (the DB lease would then turn that away).
    return {"visibility_timeout": settings.visibility_timeout_s}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("dr4sr", broker=settings.resolved_broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,  # job state lives in the database, not a result backend
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.hard_time_limit_s,
        task_default_queue="cpu",
        task_default_exchange="dr4sr",
        task_queues=tuple(
            Queue(q, Exchange("dr4sr", type="direct"), routing_key=q) for q in ("cpu", "gpu")
        ),
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    app.conf.dr4sr_settings = settings
    return app


def ping_broker(app: Celery, timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached within ``timeout`` seconds."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        if conn.transport.driver_type == "redis":
            conn.default_channel.client.ping()
