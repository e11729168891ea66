"""The API process never imports torch: job submissions are validated with the
torch-free models.config, downloads read numpy/polars files. A fresh
interpreter imports the app, serves a request of every route (jobs run in a
separate worker process, so results exist to download) and reports what it
imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service_harness import REPO, base_env


def test_the_api_serves_every_route_without_importing_torch(tmp_path: Path) -> None:
    from models.data import synthetic

    log = tmp_path / "log.csv"
    synthetic.write(log, synthetic.generate(num_users=80, num_items=40, num_patterns=8, min_len=6,
                                            max_len=12, seed=3), "csv")
    env = base_env(tmp_path / "data", TORCH_FREE_LOG=str(log))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("torch_free_app.py")), str(tmp_path / "data"),
         str(tmp_path / "worker.log")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    worker_log = (tmp_path / "worker.log").read_text(errors="replace") if (tmp_path / "worker.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}\n--- worker\n{worker_log[-3000:]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], f"the API process imported {out['heavy']}"
    missed = sorted(set(out["documented"]) - set(out["hit"]))
    assert not missed, f"routes not exercised: {missed}"
    assert all(code < 500 for codes in out["hit"].values() for code in codes), out["hit"]
