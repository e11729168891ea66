"""``make demo``: the user's path through the service, for real.

Starts the embedded service (``dr4sr serve``: SQLite, local artifacts, the
embedded broker and a worker process), then over HTTP: uploads a synthetic
interaction log with planted patterns, starts a regeneration job and polls it
with a progress bar, downloads the regenerated sequences, starts a DR4SR+
training job on them, and prints where the report is. Everything it writes
goes under ``demo-output/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from models.data.synthetic import generate, write


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(client: httpx.Client, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"dr4sr serve exited early with code {server.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready in time")


def _check(response: httpx.Response, *expected: int) -> dict:
    if response.status_code not in expected:
        raise SystemExit(f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text}")
    return response.json()


def _poll(client: httpx.Client, job: dict, title: str) -> dict:
    """Poll a job until it ends, showing overall progress and the current stage."""
    with tqdm(total=100, desc=title, unit="%", file=sys.stderr, disable=None) as bar:
        while True:
            job = _check(client.get(f"/jobs/{job['id']}"), 200)
            bar.n = round(100 * job["progress"]["fraction"])
            bar.set_postfix_str(f"{job['state']}: {job['progress'].get('stage') or ''}", refresh=False)
            bar.refresh()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1.0)
    if job["state"] != "succeeded":
        raise SystemExit(f"{title} job {job['id']} {job['state']}: {job.get('error')}")
    return job


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=250)
    parser.add_argument("--model", default="sasrec")
    args = parser.parse_args(argv)

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.monotonic()

    data = generate(num_users=args.users, num_items=args.items, num_patterns=40, seed=7)
    log = write(out / "interactions.csv", data)
    print(f"synthetic log: {log} ({data.interactions.height} interactions, {len(data.patterns)} planted patterns)")

    port = _free_port()
    env = dict(os.environ, DR4SR_DATA_DIR=str(out / "var"), DR4SR_PORT=str(port))
    for name in ("DR4SR_DATABASE_URL", "DR4SR_BROKER_URL", "DR4SR_STORAGE_URL"):
        env.pop(name, None)  # the embedded default, whatever the shell says
    server_log = open(out / "service.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env, stdout=server_log, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as anon:
            _wait_ready(anon, server)
        key = (out / "var" / "api-key").read_text().strip()
        print(f"service: {base} (embedded mode; API key in {out / 'var' / 'api-key'}, log in {out / 'service.log'})")
        with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            with open(log, "rb") as fh:
                ds = _check(client.post("/datasets", files={"file": (log.name, fh, "text/csv")}), 201, 202)
            if ds.get("validation_job_id"):
                _poll(client, {"id": ds["validation_job_id"]}, "validate")
                ds = _check(client.get(f"/datasets/{ds['id']}"), 200)
            st = ds.get("stats") or {}
            print(f"dataset {ds['id']}: {st.get('users')} users, {st.get('items')} items, "
                  f"{st.get('interactions')} interactions after {st.get('user_core')}-core "
                  f"({st.get('interactions_before')} before)")

            regen_params = {"regenerator_epochs": 8, "pretrain_epochs": 15, "profile": "fixed"}
            job = _check(client.post("/jobs/regenerate", json={"dataset_id": ds["id"], "parameters": regen_params}), 202)
            job = _poll(client, job, "regenerate")
            res = job.get("result") or {}
            pats = res.get("patterns") or {}
            print(f"regeneration {job['id']}: {pats.get('patterns')} patterns, {pats.get('pairs')} pairs, "
                  f"rows {res.get('rows')}, timings {res.get('timings')}")

            target = out / "regenerated.jsonl"
            with client.stream("GET", f"/datasets/{ds['id']}/regenerated", params={"format": "jsonl"}) as r:
                if r.status_code != 200:
                    raise SystemExit(f"download failed: {r.status_code} {r.read().decode()}")
                with open(target, "wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
            rows = target.read_text().splitlines()
            sources: dict[str, int] = {}
            for line in rows:
                src = json.loads(line).get("source", "?")
                sources[src] = sources.get(src, 0) + 1
            print(f"downloaded {target}: {len(rows)} rows {sources}")

            train_params = {"epochs": 30, "patience": 5, "personalizer": {"warmup_epochs": 3, "interval": 10}}
            job = _check(client.post("/jobs/train", json={
                "dataset_id": ds["id"], "data": "regenerated", "model": args.model,
                "personalize": True, "parameters": train_params}), 202)
            job = _poll(client, job, "train DR4SR+")
            report = _check(client.get(f"/jobs/{job['id']}/report"), 200)
            html = client.get(f"/jobs/{job['id']}/report.html")
            (out / "report.html").write_bytes(html.content)
            (out / "report.json").write_text(json.dumps(report, indent=2))
            metrics = report.get("test", {})
            print("DR4SR+ test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
            print(f"report: {out / 'report.html'} (JSON: {out / 'report.json'})")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    print(f"demo finished in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
