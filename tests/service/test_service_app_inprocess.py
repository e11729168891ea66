"""The FastAPI app in-process (SQLite, no worker): error shapes, readiness
when the broker is down, request validation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth import create_key
from app.core.db import make_engine, make_sessionmaker, session_scope
from app.core.settings import Settings
from app.main import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx2
    from fastapi.testclient import TestClient


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    # Port 1 on localhost refuses connections: the broker is "down".
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as c:
        engine = make_engine(settings.resolved_database_url)
        with session_scope(make_sessionmaker(engine)) as session:
            _, key = create_key(session, "tester")
        engine.dispose()
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def test_readyz_is_503_naming_the_broken_dependency(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["error"]["code"] == "not_ready" and "broker" in body["error"]["message"]
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["db"]["ok"] and body["checks"]["storage"]["ok"]


def test_errors_share_one_shape(client: TestClient) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.post("/jobs/regenerate", json={"parameters": {}})
    assert r.status_code == 422
    assert r.json()["error"] == {
        "code": "invalid",
        "field": "dataset_id",
        "message": r.json()["error"]["message"],
    }
    r = client.post("/datasets", content=b"user,item\n", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415 and r.json()["error"]["field"] == "file"
    r = client.post("/datasets", files={"other": ("x.csv", b"a,b\n")})
    assert r.status_code == 422 and "no file part" in r.json()["error"]["message"]
    r = client.post("/datasets", files={"file": ("empty.csv", b"")})
    assert r.status_code == 422 and r.json()["error"]["message"] == "the uploaded file is empty"


def test_job_submission_fails_cleanly_when_the_broker_is_down(
    client: TestClient, tmp_path: Path
) -> None:
    lines = ["user_id,item_id,timestamp"] + [
        f"u{u},i{(u * 7 + t * 3) % 12},{t}" for u in range(30) for t in range(8)
    ]
    r = client.post("/datasets", files={"file": ("ok.csv", "\n".join(lines).encode())})
    assert r.status_code == 201, r.text
    r = client.post("/jobs/regenerate", json={"dataset_id": r.json()["id"]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    failed = client.get("/jobs").json()["items"][0]
    assert failed["state"] == "failed" and failed["error"]["type"] == "BrokerUnavailable"


@pytest.mark.parametrize(
    ("command", "parameters", "field"),
    [
        (["regenerate"], {"regenerator": {"num_memories": 0}}, "regenerator.num_memories"),
        (["regenerate"], {"max_len": 120}, "max_len"),
        (["train"], {"personalizer": {"tau_init": 0.5}}, "personalizer.tau_init"),
        (["train"], {"model_overrides": {"rnn_size": 8}}, "model_overrides.rnn_size"),
        (["train"], {"row_filter": "random", "finetune": "original"}, "row_filter"),
    ],
)
def test_an_invalid_value_reads_the_same_in_the_cli_and_the_api(
    client: TestClient, tmp_path: Path, command: list[str], parameters: dict, field: str
) -> None:
    import json

    from typer.testing import CliRunner

    from app.cli import cli

    def flat(prefix: str, value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in flat(f"{prefix}.{k}" if prefix else k, v)]
        return ["--set", f"{prefix}={json.dumps(value)}"]

    res = CliRunner().invoke(cli, [*command, str(tmp_path / "never-read.csv"), *flat("", parameters)])
    assert res.exit_code == 2
    cli_message = res.output.strip().splitlines()[-1].removeprefix("error: ")
    assert cli_message.startswith(f"{field}: ")

    body = {"dataset_id": "00000000-0000-0000-0000-000000000000", "parameters": parameters}
    r = client.post(f"/jobs/{command[0]}", json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["field"] == f"parameters.{field}"
    assert error["message"] == f"parameters.{cli_message}"


def test_compare_seeds_are_validated_at_submission(client: TestClient) -> None:
    base = {"dataset_id": "00000000-0000-0000-0000-000000000000", "models": ["sasrec"], "variants": ["original"]}
    for extra, field in (
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [1], "parameters": {"seed": 2}}, "parameters.seed"),
        ({"seeds": ["1"]}, "seeds[0]"),
    ):
        r = client.post("/jobs/compare", json={**base, **extra})
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (extra, r.text)
    # a valid body passes validation and reaches the dataset lookup
    r = client.post("/jobs/compare", json={**base, "seeds": [1, 2, 3]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
