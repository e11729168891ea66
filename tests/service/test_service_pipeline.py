"""The used-by path over HTTP against the production topology: upload ->
regenerate -> download in every format -> train DR4SR+ -> report, topk,
checkpoint; plus cancelling a running job. Tiny data and 1-epoch stages."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import load as load_safetensors
from service_harness import Stack, assert_error, poll, stored_files, upload

from models.data.export import read_sequences
from models.data.preprocess import PreparedDataset
from models.data.sequences import RowSource, load_rows

pytestmark = [pytest.mark.service, pytest.mark.usefixtures("print_logs_on_failure")]

FORMATS = ("parquet", "jsonl", "csv", "inter", "txt")
# One epoch of everything and a one-layer regenerator: the whole path, in seconds.
TINY_REGEN = {
    "pretrain_epochs": 1,
    "regenerator_epochs": 1,
    "max_pairs": 3,
    "device": "cpu",
    "seed": 7,
    "regenerator": {
        "ffn_dim": 64,
        "cond_ffn_dim": 64,
        "enc_layers": 1,
        "dec_layers": 1,
        "cond_layers": 1,
    },
}
TINY_TRAIN = {"epochs": 1, "patience": 1, "device": "cpu", "topk": 10}


def _expected_rows(stack: Stack, dataset_id: str, job_id: str) -> tuple[list[list[str]], list[str]]:
    """The job's stored rows mapped to original ids, read straight from storage."""
    root = stack.data_dir / "artifacts"
    rows = load_rows(root / "jobs" / job_id / "output" / "regenerated.npz")
    dataset = PreparedDataset.load(root / "datasets" / dataset_id / "prepared")
    items = [dataset.item_ids[r].tolist() for r in rows.seqs]
    sources = [RowSource(int(s)).label for s in rows.source]
    return items, sources


def _tar_members(content: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def regenerated(stack: Stack, datasets_dir: Path) -> dict:
    with stack.client() as c:
        ds = upload(c, datasets_dir / "small.csv", name="used-by").json()
        r = c.post("/jobs/regenerate", json={"dataset_id": ds["id"], "parameters": TINY_REGEN})
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/jobs/{r.json()['id']}"
        job = poll(c, r.json()["id"], timeout=240, stack=stack)
    assert job["state"] == "succeeded", job
    return {"dataset": ds, "job": job}


def test_regeneration_reports_progress_and_links(regenerated: dict) -> None:
    job = regenerated["job"]
    assert job["progress"]["fraction"] == 1.0 and job["attempts"] == 1
    assert {"mine", "pairs", "regenerator"} <= set(job["progress"]["stages"])
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    rows = job["result"]["rows"]
    assert rows["original"] > 0 and rows["pattern"] > 0 and "regenerated" in rows
    assert {"regenerated", "checkpoint", "report"} <= set(job["links"])


def test_regenerated_downloads_round_trip_in_every_format(
    stack: Stack, regenerated: dict, tmp_path: Path
) -> None:
    ds_id, job_id = regenerated["dataset"]["id"], regenerated["job"]["id"]
    expected_items, expected_sources = _expected_rows(stack, ds_id, job_id)
    counts = regenerated["job"]["result"]["rows"]
    assert {s: expected_sources.count(s) for s in counts} == counts
    with stack.client() as c:
        for fmt in FORMATS:
            r = c.get(f"/datasets/{ds_id}/regenerated", params={"format": fmt})
            assert r.status_code == 200, r.text
            path = tmp_path / f"regen.{fmt}"
            path.write_bytes(r.content)
            items, sources = read_sequences(path, fmt)
            assert items == expected_items, fmt
            if sources is not None:
                assert sources == expected_sources, fmt
        # the explicit job gives the same bytes, served from the stored export
        again = c.get(f"/datasets/{ds_id}/regenerated", params={"format": "parquet", "job": job_id})
        assert again.content == (tmp_path / "regen.parquet").read_bytes()
        assert_error(c.get(f"/datasets/{ds_id}/regenerated", params={"format": "xml"}), 422)
    exports = stored_files(stack, f"jobs/{job_id}/exports")
    assert sorted(p.name for p in exports) == sorted(f"regenerated.{f}" for f in FORMATS)


def test_regenerator_checkpoint_is_a_tar_of_weights_and_config(
    stack: Stack, regenerated: dict
) -> None:
    with stack.client() as c:
        stats = c.get(f"/jobs/{regenerated['job']['id']}/report").json()
        assert stats["rows"] == regenerated["job"]["result"]["rows"]
        r = c.get(f"/jobs/{regenerated['job']['id']}/checkpoint")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    members = _tar_members(r.content)
    weights = [n for n in members if n.endswith(".safetensors")]
    assert weights and load_safetensors(members[weights[0]])
    assert "config.json" in members and json.loads(members["config.json"])


def test_train_personalised_on_regenerated_data(stack: Stack, regenerated: dict) -> None:
    ds_id, regen_id = regenerated["dataset"]["id"], regenerated["job"]["id"]
    body = {"dataset_id": ds_id, "data": "regenerated", "model": "sasrec", "personalize": True}
    with stack.client() as c:
        # DR4SR+ needs rows to re-weight. The default (fixed) profile re-weights
        # only regenerated rows, and this tiny regeneration decoded none: the
        # request is refused before anything is queued, for a train job and for
        # a compare with a dr4sr+ variant alike.
        assert regenerated["job"]["result"]["rows"]["regenerated"] == 0
        jobs_before = c.get("/jobs").json()["total"]
        for path, extra in (("/jobs/train", {"parameters": TINY_TRAIN}),
                            ("/jobs/compare", {"variants": ["original", "dr4sr+"], "parameters": TINY_TRAIN})):
            refused = c.post(path, json={**body, **extra} if path.endswith("train") else {
                "dataset_id": ds_id, "models": ["sasrec"], **extra})
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["field"] == "parameters.personalizer.weight_sources"
            assert "'regenerated': 0" in error["message"] and "parity" in error["message"]
        assert c.get("/jobs").json()["total"] == jobs_before
        # parity re-weights the original rows as well
        r = c.post("/jobs/train", json={**body, "parameters": {**TINY_TRAIN, "personalizer": {"profile": "parity"}}})
        assert r.status_code == 202, r.text
        job = poll(c, r.json()["id"], timeout=240, stack=stack)
        assert job["state"] == "succeeded", job
        assert job["regeneration_job_id"] == regen_id
        assert {"report", "report.html", "topk", "checkpoint"} <= set(job["links"])

        report = c.get(job["links"]["report"]).json()
        assert report["variant"] == "dr4sr+" and "ndcg@20" in report["test"]
        assert 0.0 <= report["test"]["ndcg@20"] <= 1.0
        html = c.get(job["links"]["report.html"])
        assert html.headers["content-type"].startswith("text/html") and "<html" in html.text.lower()

        topk = pl.read_parquet(io.BytesIO(c.get(job["links"]["topk"]).content))
        assert {"user_id", "rank", "item_id"} <= set(topk.columns)
        dataset = PreparedDataset.load(
            stack.data_dir / "artifacts" / "datasets" / ds_id / "prepared"
        )
        assert set(topk["user_id"].unique()) <= set(dataset.user_ids[1:].tolist())
        assert set(topk["item_id"].unique()) <= set(dataset.item_ids[1:].tolist())

        members = _tar_members(c.get(job["links"]["checkpoint"]).content)
        weights = [n for n in members if n.endswith(".safetensors")]
        assert weights and all(
            isinstance(v, np.ndarray) for v in load_safetensors(members[weights[0]]).values()
        )
        assert any(n.endswith("config.json") for n in members)

        # train on the original data as well: no regeneration is linked
        r = c.post(
            "/jobs/train", json={"dataset_id": ds_id, "data": "original", "parameters": TINY_TRAIN}
        )
        original = poll(c, r.json()["id"], timeout=240, stack=stack)
        assert original["state"] == "succeeded" and original["regeneration_job_id"] is None


def test_invalid_parameters_are_422_naming_the_field(stack: Stack, regenerated: dict) -> None:
    ds_id = regenerated["dataset"]["id"]
    with stack.client() as c:
        err = assert_error(
            c.post("/jobs/regenerate", json={"dataset_id": ds_id, "parameters": {"alpha": 99}}), 422
        )
        assert err["field"] == "parameters.alpha"
        err = assert_error(
            c.post("/jobs/train", json={"dataset_id": ds_id, "model": "bert4rec"}), 422
        )
        assert "model" in err["message"]
        err = assert_error(
            c.post(
                "/jobs/compare",
                json={"dataset_id": ds_id, "models": ["sasrec"], "variants": ["magic"]},
            ),
            422,
        )
        assert err["field"] == "variants[0]"
        err = assert_error(
            c.post(
                "/jobs/train",
                json={"dataset_id": ds_id, "data": "original", "regeneration_job_id": "x"},
            ),
            422,
        )


def test_cancel_stops_a_running_job_and_stores_nothing(stack: Stack, datasets_dir: Path) -> None:
    with stack.client() as c:
        ds = upload(c, datasets_dir / "small.csv", name="to-cancel").json()
        slow = {**TINY_REGEN, "pretrain_epochs": 0, "regenerator_epochs": 1000}
        job = c.post("/jobs/regenerate", json={"dataset_id": ds["id"], "parameters": slow}).json()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job['id']}").json()
            if job["state"] == "running" and "regenerator" in job["progress"]["stages"]:
                break
            assert job["state"] in ("queued", "running"), job
            time.sleep(0.2)
        else:
            raise AssertionError(f"job never reached the regenerator stage: {job}")
        assert 0.0 < job["progress"]["fraction"] < 1.0
        # the dataset cannot go while a job uses it
        assert_error(c.delete(f"/datasets/{ds['id']}"), 409, "conflict")

        r = c.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        done = poll(c, job["id"], timeout=60, stack=stack)
        assert done["state"] == "cancelled", done
        assert stored_files(stack, f"jobs/{job['id']}") == []
        assert_error(c.get(f"/jobs/{job['id']}/checkpoint"), 409, "conflict")
        assert_error(c.post(f"/jobs/{job['id']}/cancel"), 409)

        assert c.delete(f"/datasets/{ds['id']}").status_code == 204
        assert_error(c.get(f"/datasets/{ds['id']}"), 404)
        assert_error(c.get(f"/jobs/{job['id']}"), 404)
    assert stored_files(stack, f"datasets/{ds['id']}") == []


def test_a_failing_regeneration_shows_its_error(stack: Stack, regenerated: dict) -> None:
    """Support no pattern can reach: the pipeline raises and the job says why."""
    ds_id = regenerated["dataset"]["id"]
    with stack.client() as c:
        params = {**TINY_REGEN, "beta": 100_000}
        r = c.post("/jobs/regenerate", json={"dataset_id": ds_id, "parameters": params})
        job = poll(c, r.json()["id"], timeout=120, stack=stack)
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "ValueError" and "beta=100000" in job["error"]["message"]
    assert job["error"]["stage"] == "mine" and job["attempts"] == 1
    assert "checkpoint" not in job["links"]
    assert stored_files(stack, f"jobs/{job['id']}") == []


def test_compare_trains_each_model_on_each_variant(stack: Stack, regenerated: dict) -> None:
    """A compare is a parent of one ordinary train job per model x variant x
    seed; it aggregates their reports once they have all finished."""
    ds_id = regenerated["dataset"]["id"]
    with stack.client() as c:
        r = c.post(
            "/jobs/compare",
            json={
                "dataset_id": ds_id,
                "models": ["sasrec"],
                "variants": ["original", "dr4sr"],
                "seeds": [1, 2],
                "parameters": TINY_TRAIN,
            },
        )
        assert r.status_code == 202, r.text
        submitted = r.json()
        plan = submitted["parameters"]["children"]
        assert [(k["variant"], k["seed"]) for k in plan] == [
            ("original", 1), ("dr4sr", 1), ("original", 2), ("dr4sr", 2)
        ]
        assert submitted["state"] == "running" and submitted["progress"]["stage"] == "children"
        listed = c.get("/jobs", params={"parent_job_id": submitted["id"]}).json()
        assert listed["total"] == 4
        assert {j["id"] for j in listed["items"]} == {k["job_id"] for k in plan}
        # The train jobs are inserted together, so their created_at may tie:
        # paging one at a time still visits each exactly once.
        paged = [
            c.get("/jobs", params={"parent_job_id": submitted["id"], "limit": 1, "offset": n})
            .json()["items"][0]["id"]
            for n in range(4)
        ]
        assert sorted(paged) == sorted(k["job_id"] for k in plan)
        assert all(j["kind"] == "train" and j["parent_job_id"] == submitted["id"]
                   for j in listed["items"])

        job = poll(c, submitted["id"], timeout=360, stack=stack)
        assert job["state"] == "succeeded", job
        assert job["regeneration_job_id"] == regenerated["job"]["id"]
        assert job["progress"]["stages"]["children"]["done"] == 4
        report = c.get(job["links"]["report"]).json()
        kids = {k["job_id"]: c.get(f"/jobs/{k['job_id']}").json() for k in plan}
    assert all(k["state"] == "succeeded" and k["attempts"] == 1 for k in kids.values())
    assert [(run["model"], run["variant"], run["seed"]) for run in report["runs"]] == [
        ("sasrec", "original", 1),
        ("sasrec", "dr4sr", 1),
        ("sasrec", "original", 2),
        ("sasrec", "dr4sr", 2),
    ]
    for run in report["runs"]:  # each run is its train job's result, not a re-run
        assert run["test"] == kids[run["job_id"]]["result"]["test"]
    assert "significance" in report["runs"][1] and "significance" not in report["runs"][0]
    summary = {row["variant"]: row for row in report["summary"]}
    assert summary["dr4sr"]["seeds"] == 2 and summary["dr4sr"]["significance"]["seeds"] == [1, 2]


def test_a_loss_filtered_compare_scores_with_its_original_arm_job(stack: Stack, regenerated: dict) -> None:
    """row_filter 'loss' scores the regenerated rows with a model of the
    original rows: in a compare that is the original arm's train job, so the
    DR4SR train job waits for it and loads its checkpoint instead of training
    the original a second time."""
    ds_id = regenerated["dataset"]["id"]
    with stack.client() as c:
        # this regeneration must decode regenerated rows for the filter to act on
        r = c.post("/jobs/regenerate", json={"dataset_id": ds_id,
                                            "parameters": {**TINY_REGEN, "regenerator_epochs": 40}})
        assert r.status_code == 202, r.text
        regen = poll(c, r.json()["id"], timeout=240, stack=stack)
        assert regen["state"] == "succeeded" and regen["result"]["rows"]["regenerated"] > 0, regen
        r = c.post("/jobs/compare", json={
            "dataset_id": ds_id, "models": ["sasrec"], "variants": ["dr4sr", "original"], "seeds": [5],
            "regeneration_job_id": regen["id"],
            "parameters": {**TINY_TRAIN, "epochs": 3, "row_filter": "loss", "row_filter_keep": 0.5}})
        assert r.status_code == 202, r.text
        plan = {k["variant"]: k["job_id"] for k in r.json()["parameters"]["children"]}
        job = poll(c, r.json()["id"], timeout=360, stack=stack)
        assert job["state"] == "succeeded", job
        dr4sr, original = (c.get(f"/jobs/{plan[v]}").json() for v in ("dr4sr", "original"))
        report = c.get(job["links"]["report"]).json()
    assert dr4sr["parameters"]["scorer_job_id"] == original["id"]
    assert "scorer_job_id" not in original["parameters"]
    assert dr4sr["started_at"] >= original["finished_at"]  # it waited for its scorer
    kept = dr4sr["result"]["row_filter"]
    assert kept["scorer"]["reused"] is True and kept["scorer"]["job_id"] == original["id"]
    assert kept["scorer"]["test"] == original["result"]["test"]
    assert kept["kept_rows"] == -(-regen["result"]["rows"]["regenerated"] // 2)
    run = next(r for r in report["runs"] if r["variant"] == "dr4sr")
    assert run["row_filter"]["scorer"]["job_id"] == original["id"] and "significance" in run


def test_cancelling_a_compare_cancels_its_train_jobs(stack: Stack, regenerated: dict) -> None:
    ds_id = regenerated["dataset"]["id"]
    slow = {**TINY_TRAIN, "epochs": 500, "patience": 500}
    with stack.client() as c:
        r = c.post(
            "/jobs/compare",
            json={"dataset_id": ds_id, "models": ["sasrec"], "variants": ["original"],
                  "seeds": [1, 2, 3], "parameters": slow},
        )
        assert r.status_code == 202, r.text
        parent = r.json()
        ids = [k["job_id"] for k in parent["parameters"]["children"]]
        deadline = time.monotonic() + 120
        while c.get(f"/jobs/{ids[0]}").json()["state"] != "running":
            assert time.monotonic() < deadline, c.get(f"/jobs/{ids[0]}").json()
            time.sleep(0.2)
        r = c.post(f"/jobs/{parent['id']}/cancel")
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "cancelled"  # it only waited: nothing to stop
        kids = [poll(c, i, timeout=120, stack=stack) for i in ids]
        assert [k["state"] for k in kids] == ["cancelled"] * 3, kids
        assert kids[0]["started_at"] is not None  # the running one stopped at its next step
        assert_error(c.post(f"/jobs/{parent['id']}/cancel"), 409)
