"""``dr4sr serve | api | worker | db upgrade | keys create``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import typer

from app.core.settings import Settings

log = logging.getLogger("dr4sr.serve")


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        typer.echo(f"error: invalid DR4SR_* settings: {exc}", err=True)
        raise typer.Exit(2) from None


def _logging() -> None:
    logging.basicConfig(
        level=os.environ.get("DR4SR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _run_api(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    from app.main import create_app

    if workers <= 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
        return
    # Several processes share the port; each builds its app from the
    # environment, so the settings given here travel as DR4SR_* variables.
    # Migrations ran once, here, not in every process.
    from app import migrate

    if settings.migrate_on_start:
        migrate.upgrade(settings.resolved_database_url)
    os.environ["DR4SR_MIGRATE_ON_START"] = "false"
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
    )


class _WorkerSupervisor:
    """Runs ``dr4sr worker`` as a child process (CUDA must not be initialised
    in a process that forks, and the worker may exit on a hard time limit)
    and restarts it when it dies unexpectedly."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], env=os.environ.copy()
        )

    def _loop(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("worker exited with %s; restarting", self.proc.returncode)
                time.sleep(1.0)
                if not self._stopping.is_set():
                    self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option(None, help="Bind address (default DR4SR_HOST or 127.0.0.1)."),
        port: int = typer.Option(None, help="Port (default DR4SR_PORT or 8000)."),
        worker: bool = typer.Option(True, help="Also run a Celery worker."),
    ) -> None:
        """Run the service: API + a worker. Embedded by default (SQLite, local
        artifacts, no Redis); set DR4SR_DATABASE_URL / DR4SR_BROKER_URL for production."""
        _logging()
        settings = _settings()
        from app import migrate
        from app.auth import ensure_local_key
        from app.core.db import make_engine, make_sessionmaker, session_scope

        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        with session_scope(make_sessionmaker(engine)) as session:
            ensure_local_key(session, settings.resolved_api_key_file)
        engine.dispose()
        typer.echo(
            f"API key: {settings.resolved_api_key_file} (send it as 'Authorization: Bearer <key>')",
            err=True,
        )
        supervisor = _WorkerSupervisor() if worker else None
        if supervisor:
            supervisor.start()
        try:
            _run_api(
                settings.model_copy(update={"migrate_on_start": False}),
                host or settings.host,
                port or settings.port,
            )
        finally:
            if supervisor:
                supervisor.stop()

    @app.command("api")
    def api(
        host: str = typer.Option(None, help="Bind address (default DR4SR_HOST)."),
        port: int = typer.Option(None, help="Port (default DR4SR_PORT)."),
        workers: int = typer.Option(
            None, min=1, help="API processes sharing the port (default DR4SR_API_WORKERS)."
        ),
    ) -> None:
        """Run only the HTTP API (applies migrations at start)."""
        _logging()
        settings = _settings()
        _run_api(
            settings, host or settings.host, port or settings.port, workers or settings.api_workers
        )

    @app.command("worker")
    def worker(
        queues: str = typer.Option(
            None, help="Comma-separated queues (default DR4SR_WORKER_QUEUES)."
        ),
        pool: str = typer.Option("solo", help="solo (one task at a time, GPU-safe) or threads."),
        concurrency: int = typer.Option(1, min=1),
        loglevel: str = typer.Option("INFO"),
    ) -> None:
        """Run a Celery worker for the cpu and/or gpu queues."""
        settings = _settings()
        if pool not in ("solo", "threads"):
            typer.echo(
                "error: --pool must be solo or threads (CUDA does not survive fork)", err=True
            )
            raise typer.Exit(2)
        queue_list = [q for q in (queues or ",".join(settings.queues)).split(",") if q]
        from workers.tasks import celery_app

        celery_app.worker_main(
            [
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                f"--loglevel={loglevel}",
                f"--queues={','.join(queue_list)}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )

    db = typer.Typer(help="Database schema.", no_args_is_help=True)

    @db.command("upgrade")
    def db_upgrade(revision: str = typer.Argument("head")) -> None:
        """Apply the Alembic migrations."""
        settings = _settings()
        from app import migrate

        migrate.upgrade(settings.resolved_database_url, revision)
        typer.echo(f"database at {revision}", err=True)

    keys = typer.Typer(help="API keys.", no_args_is_help=True)

    @keys.command("create")
    def keys_create(name: str = typer.Argument(..., help="Principal (owner) name.")) -> None:
        """Create an API key for NAME (created if new) and print it; it is shown only once."""
        settings = _settings()
        from app import migrate
        from app.auth import create_key
        from app.core.db import make_engine, make_sessionmaker, session_scope

        migrate.upgrade(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        try:
            with session_scope(make_sessionmaker(engine)) as session:
                _, key = create_key(session, name)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            engine.dispose()
        typer.echo(key)

    app.add_typer(db, name="db")
    app.add_typer(keys, name="keys")
