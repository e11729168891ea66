"""docker-compose.yml and the Dockerfile use the entry points and DR4SR_*
settings the tests exercise (no Docker engine here: the files are parsed)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import typer.main

from app.cli import cli
from app.core.settings import Settings

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
# The names the service tests set for the production topology (conftest/test_service_api).
TEST_ENV = ("DR4SR_DATABASE_URL", "DR4SR_BROKER_URL", "DR4SR_STORAGE_URL", "DR4SR_DATA_DIR")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command_names() -> set[str]:
    group = typer.main.get_command(cli)
    return set(group.commands)  # type: ignore[attr-defined]


def test_services_and_entry_points(compose: dict) -> None:
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dr4sr"] == "app.cli:main"
    commands = _command_names()
    for name in ("api", "worker"):
        command = services[name]["command"]
        assert command[0] == "dr4sr" and command[1] == name and name in commands
    assert "--pool" in services["worker"]["command"]
    pool = services["worker"]["command"][services["worker"]["command"].index("--pool") + 1]
    assert pool in ("solo", "threads")  # CUDA does not survive a forking pool


def test_env_names_are_settings_fields(compose: dict) -> None:
    fields = set(Settings.model_fields)
    for name in ("api", "worker"):
        env = _env(compose["services"][name])
        for key in env:
            assert key.startswith("DR4SR_") and key.removeprefix("DR4SR_").lower() in fields, key
        for key in TEST_ENV:
            assert key in env, f"{name} lacks {key}"
        assert env["DR4SR_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["DR4SR_BROKER_URL"].startswith("redis://")
        # the limits the compose file sets satisfy visibility > hard > soft
        settings = Settings(**{k.removeprefix("DR4SR_").lower(): v for k, v in env.items()})
        assert (
            settings.visibility_timeout_s > settings.hard_time_limit_s > settings.soft_time_limit_s
        )


def test_worker_reserves_a_gpu_and_shares_artifacts(compose: dict) -> None:
    services = compose["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    storage = _env(services["api"])["DR4SR_STORAGE_URL"]
    for name in ("api", "worker"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get(storage) == "artifacts", (
            f"{name} must mount the artifacts volume at {storage}"
        )
    assert "artifacts" in compose["volumes"]


def test_every_service_has_a_health_check(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert "healthcheck" in service, name
    assert "/readyz" in " ".join(compose["services"]["api"]["healthcheck"]["test"])


def test_dockerfile_pins_cpu_torch_before_the_project() -> None:
    text = (REPO / "Dockerfile").read_text()
    torch = re.search(
        r'pip install --index-url "\$\{TORCH_INDEX\}" "torch==\$\{TORCH_VERSION\}"', text
    )
    project = text.find("pip install .")
    assert torch and 0 <= torch.start() < project
    assert re.search(r"ARG TORCH_VERSION=2\.13\.0", text)
    assert "download.pytorch.org/whl/cpu" in text
