"""The Python client (app.client): retries and typed errors against a mock
transport, then the used-by path against the real server in both topologies
(production: the `stack` fixture, API + worker on PostgreSQL and Redis;
embedded: `dr4sr serve`)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
from service_harness import SYNC_MAX, Proc, Stack, base_env, cli, free_port, wait_ready

from app.client import (
    Client,
    Conflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)

TINY_REGEN = {
    "pretrain_epochs": 1,
    "regenerator_epochs": 1,
    "max_pairs": 3,
    "device": "cpu",
    "seed": 7,
    "regenerator": {"ffn_dim": 64, "cond_ffn_dim": 64, "enc_layers": 1, "dec_layers": 1, "cond_layers": 1},
}
TINY_TRAIN = {"epochs": 1, "patience": 1, "device": "cpu", "topk": 10}


# -- against a mock transport --------------------------------------------------------
def _mock(answers: list[httpx.Response], seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    return httpx.Client(base_url="http://api", transport=httpx.MockTransport(handler))


def _error(status: int, code: str, message: str, field: str | None = None, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message, **({"field": field} if field else {})}}
    return httpx.Response(status, json=body, headers=headers)


def test_429_and_503_are_retried_honouring_retry_after() -> None:
    seen: list[httpx.Request] = []
    slept: list[float] = []
    answers = [
        _error(503, "unavailable", "broker down", **{"Retry-After": "2"}),
        _error(429, "too_many_requests", "8 active jobs", **{"Retry-After": "1"}),
        httpx.Response(202, json={"id": "j1", "kind": "train", "state": "queued"}),
    ]
    api = Client("http://api", "k", http=_mock(answers, seen), sleep=slept.append)
    job = api.train("ds1", epochs=3)
    assert job.id == "j1" and job.state == "queued"
    assert slept == [2.0, 1.0]
    assert len(seen) == 3 and all(r.headers["Authorization"] == "Bearer k" for r in seen)
    assert seen[0].read() == seen[2].read()  # the same body each time


def test_backoff_without_retry_after_grows_and_gives_up_with_a_typed_error() -> None:
    seen: list[httpx.Request] = []
    slept: list[float] = []
    answers = [_error(503, "unavailable", "database down") for _ in range(4)]
    api = Client("http://api", "k", http=_mock(answers, seen), retries=3, backoff=1.0, sleep=slept.append)
    with pytest.raises(Unavailable) as info:
        api.job("j1")
    assert info.value.status == 503 and info.value.code == "unavailable"
    assert len(seen) == 4 and len(slept) == 3
    assert 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0 and 2.0 <= slept[2] <= 4.0


def test_error_answers_raise_typed_exceptions() -> None:
    seen: list[httpx.Request] = []
    answers = [
        _error(422, "invalid", "parameters.alpha: Input should be less than or equal to 10", "parameters.alpha"),
        _error(404, "not_found", "no dataset x"),
        _error(401, "unauthorized", "unknown API key"),
        _error(409, "conflict", "job j is running"),
        _error(429, "too_many_requests", "8 active jobs"),
    ]
    api = Client("http://api", "k", http=_mock(answers, seen), retries=0)
    with pytest.raises(InvalidRequest) as info:
        api.regenerate("ds", alpha=99)
    assert info.value.field == "parameters.alpha" and "less than or equal to 10" in info.value.message
    with pytest.raises(NotFound):
        api.dataset("x")
    with pytest.raises(Unauthorized):
        api.datasets()
    with pytest.raises(Conflict):
        api.report("j")
    with pytest.raises(TooManyRequests):
        api.regenerate("ds")


def test_connection_errors_are_retried_only_for_repeatable_requests() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"id": "j", "kind": "train", "state": "running"})

    http = httpx.Client(base_url="http://api", transport=httpx.MockTransport(handler))
    api = Client("http://api", "k", http=http, sleep=lambda _: None)
    assert api.job("j").state == "running" and calls["n"] == 2
    calls["n"] = 0
    with pytest.raises(httpx.ConnectError):  # a submission is not repeated blindly
        api.train("ds")


# -- against the real server ---------------------------------------------------------
def _used_by_path(api: Client, log: Path, tmp: Path, *, regenerate: bool) -> None:
    ds = api.upload(log, name="client-test")
    assert ds.status == "ready" and ds.data["num_users"] > 0
    assert ds.id in {d.id for d in api.datasets()}

    with pytest.raises(InvalidRequest) as info:
        api.regenerate(ds, regenerator={"num_memories": 0})
    assert info.value.field == "parameters.regenerator.num_memories"
    with pytest.raises(InvalidRequest) as info:
        api.train(ds, model="sasrec", epochs=0)
    assert info.value.field == "parameters.epochs"
    with pytest.raises(NotFound):
        api.job("00000000-0000-0000-0000-000000000000")

    source = None
    if regenerate:
        regen = api.regenerate(ds, **TINY_REGEN).wait(timeout=300, poll=0.3)
        assert regen.state == "succeeded" and regen.progress["fraction"] == pytest.approx(1.0)
        rows = pl.read_parquet(api.download_regenerated(ds, "parquet", tmp / "regen.parquet"))
        assert rows.height > 0
        text = api.download_regenerated(ds, "txt", tmp / "regen.txt", job=regen).read_text()
        assert text.strip()
        source = regen
    run = api.train(ds, model="sasrec", regeneration=source, **TINY_TRAIN)
    with pytest.raises(Conflict):
        api.report(run)  # not finished yet (queued or running)
    run.wait(timeout=300, poll=0.3)
    report = api.report(run)
    assert report["kind"] == "train" and "ndcg@20" in report["test"]
    assert report["variant"] == ("dr4sr" if regenerate else "original")
    tar_path = api.checkpoint(run, tmp / "model.tar")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert any(n.endswith("model.safetensors") for n in names), names
    assert pl.read_parquet(api.topk(run, tmp / "topk.parquet")).height > 0

    # a compare is a parent of train jobs, one per variant x seed
    table = api.compare(ds, models=["sasrec"], variants=["original"], seeds=[1, 2], **TINY_TRAIN)
    table.wait(timeout=300, poll=0.3, progress=False)
    kids = table.children()
    assert sorted((k.data["parameters"]["seed"], k.state) for k in kids) == [
        (1, "succeeded"), (2, "succeeded")]
    assert [r["job_id"] for r in api.report(table)["runs"]] == [
        k["job_id"] for k in table.data["parameters"]["children"]]

    doomed = api.train(ds, model="sasrec", **TINY_TRAIN).cancel()
    with pytest.raises(JobFailed) as failed:
        doomed.wait(timeout=120, poll=0.3, progress=False)
    assert failed.value.job.state == "cancelled"


def test_client_drives_the_production_topology(stack: Stack, datasets_dir: Path, tmp_path: Path,
                                               print_logs_on_failure) -> None:
    with Client(stack.base_url, stack.keys["alice"]) as api:
        _used_by_path(api, datasets_dir / "small.csv", tmp_path, regenerate=True)
    with Client(stack.base_url, "not-a-key", retries=0) as stranger, pytest.raises(Unauthorized):
        stranger.datasets()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("client-embedded")
    env = base_env(data_dir, DR4SR_SYNC_VALIDATION_MAX_BYTES=str(SYNC_MAX))
    port = free_port()
    serve = Proc("serve", cli("serve", "--port", str(port)), env, data_dir / "serve.log").start()
    s = Stack(f"http://127.0.0.1:{port}", env, data_dir, [serve])
    try:
        wait_ready(s.base_url, s.procs)
        s.keys["local"] = (data_dir / "api-key").read_text().strip()
        yield s
    finally:
        s.stop()


def test_client_drives_the_embedded_topology(embedded: Stack, datasets_dir: Path, tmp_path: Path) -> None:
    try:
        with Client(embedded.base_url, embedded.keys["local"]) as api:
            _used_by_path(api, datasets_dir / "small.csv", tmp_path, regenerate=False)
            big = api.upload(datasets_dir / "large.csv", wait=False)
            assert big.status == "validating"
            assert big.wait(timeout=180, poll=0.3).status == "ready"
            with pytest.raises(JobFailed) as bad:
                api.upload(datasets_dir / "bad_large.csv")
            assert "yesterday" in str(bad.value)
    except BaseException:
        print(embedded.logs())
        raise
