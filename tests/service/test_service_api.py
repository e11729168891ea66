"""The production topology over HTTP: a uvicorn API process and a Celery
worker process, with PostgreSQL, Redis and a local artifact folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_harness import MAX_UPLOAD, Stack, assert_error, poll, stored_files, upload

pytestmark = [pytest.mark.service, pytest.mark.usefixtures("print_logs_on_failure")]


# -- health and auth ----------------------------------------------------------------
def test_readyz_checks_db_broker_and_storage(stack: Stack) -> None:
    r = httpx.get(f"{stack.base_url}/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert {k: v["ok"] for k, v in checks.items()} == {"db": True, "broker": True, "storage": True}
    assert checks["broker"]["detail"] == "redis"
    assert httpx.get(f"{stack.base_url}/healthz").json() == {"status": "ok"}


def test_requests_without_a_valid_key_are_401(stack: Stack) -> None:
    assert_error(httpx.get(f"{stack.base_url}/datasets"), 401, "unauthorized")
    r = httpx.get(f"{stack.base_url}/jobs", headers={"Authorization": "Bearer dr4sr_not-a-key"})
    assert_error(r, 401, "unauthorized")
    ok = httpx.get(f"{stack.base_url}/datasets", headers={"X-API-Key": stack.keys["alice"]})
    assert ok.status_code == 200


def test_openapi_documents_the_error_shape_and_upload(stack: Stack) -> None:
    spec = httpx.get(f"{stack.base_url}/openapi.json").json()
    assert "ErrorResponse" in spec["components"]["schemas"]
    upload_body = spec["paths"]["/datasets"]["post"]["requestBody"]["content"]
    assert "file" in upload_body["multipart/form-data"]["schema"]["properties"]
    assert spec["paths"]["/jobs/regenerate"]["post"]["requestBody"]["content"]["application/json"]


# -- uploads -----------------------------------------------------------------------------
def test_small_upload_is_validated_in_the_request(stack: Stack, datasets_dir: Path) -> None:
    with stack.client() as c:
        r = upload(c, datasets_dir / "small.csv", name="small")
        assert r.status_code == 201, r.text
        ds = r.json()
        assert r.headers["location"] == f"/datasets/{ds['id']}"
        assert ds["status"] == "ready" and ds["num_users"] > 0 and ds["num_items"] > 0
        assert ds["stats"]["interactions"] > 0
        assert c.get(f"/datasets/{ds['id']}").json()["sha256"] == ds["sha256"]
        assert ds["id"] in [d["id"] for d in c.get("/datasets").json()["items"]]
    assert stored_files(stack, f"datasets/{ds['id']}/prepared")


def test_bad_upload_is_422_naming_line_and_column_and_stores_nothing(
    stack: Stack, datasets_dir: Path, tmp_path: Path
) -> None:
    lines = (datasets_dir / "small.csv").read_text().splitlines()
    lines[7] = lines[7].rsplit(",", 1)[0] + ",not-a-time"
    bad = tmp_path / "ratings.csv"
    bad.write_text("\n".join(lines) + "\n")
    before = stored_files(stack, "datasets")
    with stack.client() as c:
        total = c.get("/datasets").json()["total"]
        err = assert_error(upload(c, bad), 422, "invalid_data")
        assert "line 8" in err["message"] and "timestamp" in err["message"], err
        assert err["field"] == "file.timestamp"
        assert c.get("/datasets").json()["total"] == total
        # bad option values are 422 naming the field
        err = assert_error(upload(c, datasets_dir / "small.csv", user_core="many"), 422)
        assert err["field"] == "user_core"
        err = assert_error(upload(c, datasets_dir / "small.csv", colour="blue"), 422)
        assert err["field"] == "colour"
    assert stored_files(stack, "datasets") == before


def test_oversized_upload_is_413_and_stores_nothing(stack: Stack, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    big.write_bytes(b"user_id,item_id,timestamp\n" + b"u1,i1,1\n" * (MAX_UPLOAD // 2))
    before = stored_files(stack, "datasets")
    with stack.client() as c:
        assert_error(upload(c, big), 413, "too_large")
        # without a Content-Length the limit is enforced while streaming
        boundary = "dr4srboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"'
            "\r\nContent-Type: text/csv\r\n\r\n"
        ).encode()

        def chunks() -> Iterator[bytes]:
            yield head
            data = big.read_bytes()[: MAX_UPLOAD + 20_000]
            for i in range(0, len(data), 16384):
                yield data[i : i + 16384]
            yield f"\r\n--{boundary}--\r\n".encode()

        try:
            r = c.post(
                "/datasets",
                content=chunks(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        except httpx.HTTPError as exc:  # the server may hang up while we are still sending
            pytest.fail(f"no 413 response to a chunked upload: {exc!r}")
        assert_error(r, 413, "too_large")
    assert stored_files(stack, "datasets") == before
    assert not list((stack.data_dir / "work" / "uploads").glob("upload-*"))


def test_large_upload_is_validated_by_a_job(stack: Stack, datasets_dir: Path) -> None:
    with stack.client() as c:
        r = upload(c, datasets_dir / "large.csv")
        assert r.status_code == 202, r.text
        ds = r.json()
        assert ds["status"] == "validating" and ds["validation_job_id"]
        job = poll(c, ds["validation_job_id"], stack=stack)
        assert job["state"] == "succeeded", job
        assert job["progress"]["fraction"] == 1.0 and "prepare" in job["progress"]["stages"]
        ds = c.get(r.headers["location"]).json()
        assert ds["status"] == "ready" and ds["num_users"] > 0


def test_large_bad_upload_fails_its_job_with_the_readers_message(
    stack: Stack, datasets_dir: Path
) -> None:
    with stack.client() as c:
        r = upload(c, datasets_dir / "bad_large.csv")
        assert r.status_code == 202, r.text
        ds_id, job_id = r.json()["id"], r.json()["validation_job_id"]
        job = poll(c, job_id, stack=stack)
        assert job["state"] == "failed", job
        assert job["error"]["type"] in ("TimestampError", "DataError"), job["error"]
        assert "line 201" in job["error"]["message"] and job["error"]["column"] == "timestamp"
        assert job["attempts"] == 1  # bad data is not retried
        ds = c.get(f"/datasets/{ds_id}").json()
        assert ds["status"] == "invalid" and "line 201" in ds["error"]["message"]
    assert stored_files(stack, f"datasets/{ds_id}") == []


# -- ownership -------------------------------------------------------------------------
def test_other_principals_get_404(stack: Stack, datasets_dir: Path) -> None:
    with stack.client("alice") as alice, stack.client("bob") as bob:
        ds = upload(alice, datasets_dir / "small.csv").json()
        job = alice.post(
            "/jobs/regenerate",
            json={"dataset_id": ds["id"], "parameters": {"regenerator_epochs": 1}},
        ).json()
        alice.post(f"/jobs/{job['id']}/cancel")
        assert_error(bob.get(f"/datasets/{ds['id']}"), 404, "not_found")
        assert_error(bob.delete(f"/datasets/{ds['id']}"), 404)
        assert_error(bob.get(f"/jobs/{job['id']}"), 404)
        assert_error(bob.post(f"/jobs/{job['id']}/cancel"), 404)
        assert_error(bob.get(f"/datasets/{ds['id']}/regenerated"), 404)
        assert_error(bob.post("/jobs/regenerate", json={"dataset_id": ds["id"]}), 404)
        assert bob.get("/datasets").json()["total"] == 0
        assert bob.get("/jobs").json()["total"] == 0
        assert alice.get(f"/datasets/{ds['id']}").status_code == 200


def test_jobs_are_routed_to_the_queue_of_their_device(stack: Stack, datasets_dir: Path) -> None:
    with stack.client() as c:
        ds = upload(c, datasets_dir / "small.csv").json()
        queues = {}
        for device in ("cuda", "cpu", "auto"):
            params = {"device": device, "regenerator_epochs": 1}
            job = c.post("/jobs/regenerate", json={"dataset_id": ds["id"], "parameters": params})
            assert job.status_code == 202, job.text
            queues[device] = job.json()["queue"]
            c.post(f"/jobs/{job.json()['id']}/cancel")
    # auto follows DR4SR_AUTO_DEVICE_QUEUE (default cpu; compose sets gpu)
    assert queues == {"cuda": "gpu", "cpu": "cpu", "auto": "cpu"}
