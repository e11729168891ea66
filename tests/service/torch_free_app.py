"""Run by test_service_torch_free.py in a fresh interpreter: the app in process
(TestClient, embedded SQLite + filesystem broker + local artifacts) next to a
worker process, a request to every route, then which heavy modules the API
process imported. Prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path


def main(data_dir: Path, log_path: Path) -> None:
    from app.auth import create_key
    from app.core.db import make_engine, make_sessionmaker, session_scope
    from app.core.settings import Settings
    from app.main import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    settings = Settings()  # DR4SR_DATA_DIR etc. from the environment, as the worker reads them
    app = create_app(settings)
    hit: dict[str, list[int]] = {}
    worker = None
    with TestClient(app) as c:
        engine = make_engine(settings.resolved_database_url)
        with session_scope(make_sessionmaker(engine)) as session:
            _, key = create_key(session, "torch-free")
        engine.dispose()
        log = open(log_path, "wb")
        worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], stdout=log,
                                  stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
        c.headers["Authorization"] = f"Bearer {key}"

        def call(method: str, route: str, url: str, *expected: int, **kw):
            r = c.request(method, url, **kw)
            hit.setdefault(f"{method} {route}", []).append(r.status_code)
            assert r.status_code in expected, (method, url, r.status_code, r.text[:500])
            return r

        def wait(job_id: str) -> dict:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                job = call("GET", "/jobs/{job_id}", f"/jobs/{job_id}", 200).json()
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    assert job["state"] == "succeeded", job
                    return job
                time.sleep(0.3)
            raise AssertionError(f"job {job_id} did not finish")

        call("GET", "/healthz", "/healthz", 200)
        call("GET", "/readyz", "/readyz", 200)
        for route in ("/openapi.json", "/docs", "/redoc"):
            call("GET", route, route, 200)
        ds = call("POST", "/datasets", "/datasets", 201,
                  files={"file": ("log.csv", Path(os.environ["TORCH_FREE_LOG"]).read_bytes())}).json()
        ds_id = ds["id"]
        call("GET", "/datasets", "/datasets", 200)
        call("GET", "/datasets/{dataset_id}", f"/datasets/{ds_id}", 200)
        call("GET", "/datasets/{dataset_id}/regenerated", f"/datasets/{ds_id}/regenerated", 404)
        tiny = {"pretrain_epochs": 0, "regenerator_epochs": 1, "max_pairs": 2, "device": "cpu",
                "regenerator": {"ffn_dim": 32, "cond_ffn_dim": 32, "enc_layers": 1, "dec_layers": 1,
                                "cond_layers": 1, "d_model": 32}}
        call("POST", "/jobs/regenerate", "/jobs/regenerate", 422,
             json={"dataset_id": ds_id, "parameters": {"regenerator": {"num_memories": 0}}})
        regen = call("POST", "/jobs/regenerate", "/jobs/regenerate", 202,
                     json={"dataset_id": ds_id, "parameters": tiny}).json()
        wait(regen["id"])
        for fmt in ("parquet", "jsonl", "csv", "inter", "txt"):
            call("GET", "/datasets/{dataset_id}/regenerated", f"/datasets/{ds_id}/regenerated?format={fmt}", 200)
        train_params = {"epochs": 1, "device": "cpu", "topk": 5, "model_overrides": {"embed_dim": 16}}
        train = call("POST", "/jobs/train", "/jobs/train", 202,
                     json={"dataset_id": ds_id, "data": "regenerated", "parameters": train_params}).json()
        compare = call("POST", "/jobs/compare", "/jobs/compare", 202,
                       json={"dataset_id": ds_id, "models": ["sasrec"], "variants": ["original", "dr4sr"],
                             "parameters": train_params}).json()
        # the compare job is only submitted (its training is tested elsewhere): cancel it
        call("POST", "/jobs/{job_id}/cancel", f"/jobs/{compare['id']}/cancel", 200, 202)
        call("GET", "/jobs/{job_id}/report", f"/jobs/{compare['id']}/report", 404, 409)
        wait(train["id"])
        call("GET", "/jobs", "/jobs", 200)
        tid = train["id"]
        for suffix in ("report", "report.html", "topk", "checkpoint"):
            call("GET", f"/jobs/{{job_id}}/{suffix}", f"/jobs/{tid}/{suffix}", 200)
        call("POST", "/jobs/{job_id}/cancel", f"/jobs/{tid}/cancel", 409)
        for route, url in (("/ui", "/ui"), ("/ui/", "/ui/"), ("/ui/datasets/{dataset_id}", f"/ui/datasets/{ds_id}"),
                           ("/ui/jobs", "/ui/jobs"), ("/ui/jobs/new/{kind}", "/ui/jobs/new/train"),
                           ("/ui/jobs/{job_id}", f"/ui/jobs/{tid}")):
            call("GET", route, url, 200, 307, follow_redirects=False)
        call("DELETE", "/datasets/{dataset_id}", f"/datasets/{ds_id}", 204)
        routes = sorted(f"{m.upper()} {p}" for p, ops in app.openapi()["paths"].items() for m in ops)
    if worker is not None:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    heavy = sorted(m for m in ("torch", "safetensors.torch", "models.training", "models.regenerator") if m in sys.modules)
    print(json.dumps({"heavy": heavy, "hit": hit, "documented": routes}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
