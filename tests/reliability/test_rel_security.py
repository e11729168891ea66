"""Security properties of the running service: ownership isolation on every
resource route, keys hashed at rest and compared in constant time, no client
file name or id reaching a filesystem path, no pickle anywhere, uploaded
Parquet that cannot run code, and per-principal limits on active jobs and
stored bytes."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from reliability_harness import (
    MAX_ACTIVE_JOBS,
    QUOTA,
    REPO,
    Service,
    files_under,
)
from service_harness import assert_error

pytestmark = pytest.mark.service

GOOD = [f"u{u},i{(u * 7 + t * 3) % 12},{1000 + t}" for u in range(30) for t in range(8)]
TINY_CSV = ("user_id,item_id,timestamp\n" + "\n".join(GOOD) + "\n").encode()
# Path parameters of the resource routes, and what to put in them.
PATH_PARAMS = ("dataset_id", "job_id")


def _upload(c: httpx.Client, data: bytes = TINY_CSV, name: str = "ok.csv") -> dict:
    r = c.post("/datasets", files={"file": (name, data)})
    assert r.status_code == 201, r.text
    return r.json()


def _regenerate(c: httpx.Client, dataset_id: str) -> dict:
    r = c.post("/jobs/regenerate", json={"dataset_id": dataset_id, "parameters": {}})
    assert r.status_code == 202, r.text
    return r.json()


def _same_but_ids(a: httpx.Response, a_ids: list[str], b: httpx.Response, b_ids: list[str]) -> bool:
    def scrub(r: httpx.Response, ids: list[str]) -> tuple[int, str]:
        text = r.text
        for i in ids:
            text = text.replace(i, "<id>")
        return r.status_code, text

    return scrub(a, a_ids) == scrub(b, b_ids)


# -- ownership ----------------------------------------------------------------------
def test_every_resource_route_hides_other_principals_resources(api_service: Service) -> None:
    api_service.add_key("alice2")
    api_service.add_key("bob2")
    spec = httpx.get(f"{api_service.base_url}/openapi.json").json()
    with api_service.client("alice2") as alice, api_service.client("bob2") as bob:
        ds = _upload(alice)["id"]
        job = _regenerate(alice, ds)["id"]
        own = {"dataset_id": ds, "job_id": job}
        missing = {"dataset_id": str(uuid.uuid4()), "job_id": str(uuid.uuid4())}
        checked = []
        for path, operations in spec["paths"].items():
            params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
            if not params:
                continue
            unknown = set(params) - set(PATH_PARAMS)
            assert not unknown, f"{path}: add {unknown} to PATH_PARAMS and to this test"
            for method in operations:
                theirs = bob.request(method, path.format(**own))
                nothing = bob.request(method, path.format(**missing))
                assert_error(theirs, 404, "not_found")
                # indistinguishable from an id that does not exist at all
                assert _same_but_ids(theirs, list(own.values()), nothing, list(missing.values()))
                checked.append(f"{method.upper()} {path}")
        assert len(checked) >= 9, checked  # every {id} route of the API

        # ids in bodies and queries are owner-checked too
        assert_error(bob.post("/jobs/regenerate", json={"dataset_id": ds}), 404)
        assert_error(bob.post("/jobs/train", json={"dataset_id": ds}), 404)
        body = {"dataset_id": ds, "models": ["sasrec"], "variants": ["original"]}
        assert_error(bob.post("/jobs/compare", json=body), 404)
        bobs = _upload(bob)["id"]
        train = {"dataset_id": bobs, "data": "regenerated", "regeneration_job_id": job}
        assert_error(bob.post("/jobs/train", json=train), 404)
        r = bob.get(f"/datasets/{bobs}/regenerated", params={"job": job})
        assert_error(r, 404)

        # listings never show them, whatever the filter
        assert ds not in [d["id"] for d in bob.get("/datasets").json()["items"]]
        assert bob.get("/jobs", params={"dataset_id": ds}).json() == {"items": [], "total": 0}
        assert job not in [j["id"] for j in bob.get("/jobs").json()["items"]]
        # and the owner still has everything (bob's DELETE and cancel changed nothing)
        assert alice.get(f"/datasets/{ds}").status_code == 200
        assert alice.get(f"/jobs/{job}").json()["state"] == "queued"
        alice.post(f"/jobs/{job}/cancel")


# -- keys ---------------------------------------------------------------------------
def test_keys_are_stored_only_as_sha256_digests(api_service: Service) -> None:
    from sqlalchemy import create_engine, text

    key = api_service.add_key("keyholder")
    engine = create_engine(api_service.env["DR4SR_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = [
                tuple(str(v) for v in row)
                for table in ("api_keys", "principals")
                for row in conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed names
            ]
            digest = conn.execute(
                text(
                    "SELECT k.key_hash, k.prefix FROM api_keys k JOIN principals p "
                    "ON p.id = k.principal_id WHERE p.name = 'keyholder'"
                )
            ).one()
    finally:
        engine.dispose()
    assert digest[0] == hashlib.sha256(key.encode()).hexdigest()
    assert key.startswith(digest[1]) and len(digest[1]) <= 12  # a display prefix, not the key
    assert not any(key in value or key[6:] in value for row in rows for value in row)


def test_key_comparison_is_constant_time(tmp_path: Path, monkeypatch) -> None:
    import hmac

    from app import auth, migrate
    from app.core.db import make_engine, make_sessionmaker, session_scope

    url = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    migrate.upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    with session_scope(sessions) as session:
        _, key = auth.create_key(session, "timing")
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with session_scope(sessions) as session:
        assert auth.authenticate(session, key) is not None
        assert auth.authenticate(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert calls == [(digest, digest)]  # the decision on a match goes through compare_digest


# -- paths ----------------------------------------------------------------------------
def test_client_file_names_never_become_paths(api_service: Service) -> None:
    api_service.add_key("mallory")
    tag = uuid.uuid4().hex[:8]
    names = [
        f"../../../../../../tmp/dr4sr-evil-{tag}.csv",
        f"/tmp/dr4sr-evil-{tag}-abs.csv",
        f"..\\..\\..\\dr4sr-evil-{tag}-win.csv",
        "subdir/../../../../etc/passwd",
        ".hidden.csv",
        "%2e%2e%2fdr4sr-evil.csv",
        "x" * 500 + ".csv",
        "na\u0131ve \u202e\u0645.csv",
    ]
    with api_service.client("mallory") as c:
        for name in names:
            ds = _upload(c, name=name)
            stored = files_under(api_service.store_dir / "datasets" / ds["id"] / "raw")
            assert stored == [ds["filename"]], (name, stored)
            fn = ds["filename"]
            assert "/" not in fn and "\\" not in fn and not fn.startswith(".") and fn != ".."
            assert len(fn) <= 200 and fn.isascii()
    assert not list(Path("/tmp").glob(f"dr4sr-evil-{tag}*"))
    for path in files_under(api_service.data_dir):
        assert ".." not in path.split("/")


def test_ids_are_never_paths(api_service: Service) -> None:
    with api_service.client("mallory") as c:
        for raw in (
            "/datasets/..%2F..%2Fetc%2Fpasswd",
            "/datasets/%2e%2e",
            "/jobs/..%2F..%2Fartifacts/report",
            "/jobs/%2E%2E%2F%2E%2E/checkpoint",
        ):
            r = c.get(raw)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (raw, r.text)
        r = c.post("/jobs/regenerate", json={"dataset_id": "../../../etc/passwd"})
        assert_error(r, 404, "not_found")
        ds = _upload(c)["id"]
        r = c.get(f"/datasets/{ds}/regenerated", params={"job": "../../jobs"})
        assert_error(r, 404, "not_found")
        r = c.delete("/datasets/..%2F" + ds)
        assert_error(r, 404, "not_found")
        assert c.get(f"/datasets/{ds}").status_code == 200


# -- no pickle ------------------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def _python_files() -> list[Path]:
    """The shipped code and the benchmarks. Tests are left out: they never
    load untrusted bytes (one round-trips an exception through pickle)."""
    roots = ("app", "workers", "models", "migrations", "benchmarks")
    return [p for root in roots for p in sorted((REPO / root).rglob("*.py"))]


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for name in [module, *names] if module else names:
                if name and name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"line {node.lineno}: imports {name}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        kwargs = {k.arg: k.value for k in node.keywords}
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        attr = node.func.attr
        if owner_name == "torch" and attr == "load":
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if owner_name == "torch" and attr == "save":  # a pickle: checkpoints are safetensors
            found.append(f"line {node.lineno}: torch.save")
        if attr == "load" and owner_name in ("np", "numpy"):
            flag = kwargs.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"line {node.lineno}: np.load with allow_pickle")
        if attr in ("read_pickle", "to_pickle", "unsafe_load"):
            found.append(f"line {node.lineno}: {attr}")
        if owner_name == "yaml" and attr == "load":
            found.append(f"line {node.lineno}: yaml.load (use yaml.safe_load)")
    return found


def test_no_pickle_anywhere() -> None:
    files = _python_files()
    assert len(files) > 40
    problems = {
        str(p.relative_to(REPO)): found
        for p in files
        if (found := _unsafe_calls(ast.parse(p.read_text(), filename=str(p))))
    }
    assert problems == {}
    # the queue speaks JSON only: a message cannot carry a pickle
    from app.core.broker import make_celery
    from app.core.settings import Settings

    conf = make_celery(Settings(broker_url="redis://127.0.0.1:1/0")).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_serializer == "json" and conf.task_ignore_result


def test_the_pickle_detector_detects() -> None:
    bad = (
        "import pickle\nfrom joblib import load\nimport torch, numpy as np\n"
        "torch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\n"
        "np.load('x.npy', allow_pickle=True)\nimport yaml\nyaml.load(open('x'))\n"
        "torch.save(model.state_dict(), 'm.pt')\n"
    )
    assert len(_unsafe_calls(ast.parse(bad))) == 7
    good = "import torch, numpy as np\ntorch.load('m', weights_only=True)\nnp.load('x')\n"
    assert _unsafe_calls(ast.parse(good)) == []


def _evil_parquet(path: Path, marker: Path) -> None:
    """A Parquet file whose Arrow schema declares the pickle-backed
    'arrow.py_extension_type' (CVE-2023-47248): a reader that unpickles it
    runs ``touch marker``. The pickle is written by hand (protocol 0)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."

    class Evil(pa.ExtensionType):
        def __init__(self) -> None:
            super().__init__(pa.string(), "arrow.py_extension_type")

        def __arrow_ext_serialize__(self) -> bytes:
            return payload

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            return cls()

    users = pa.array([line.split(",")[0] for line in GOOD])
    items = pa.ExtensionArray.from_storage(Evil(), pa.array([line.split(",")[1] for line in GOOD]))
    times = pa.array([int(line.split(",")[2]) for line in GOOD])
    pq.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": times}), path)


def test_uploaded_parquet_cannot_execute_code(api_service: Service, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.parquet"
    _evil_parquet(evil, marker)
    with api_service.client("mallory") as c:
        r = c.post("/datasets", files={"file": ("evil.parquet", evil.read_bytes())})
    assert r.status_code in (201, 422), r.text
    assert not marker.exists()
    # nor do the Parquet readers installed here, in a fresh process
    code = (
        "import sys, pyarrow.parquet as pq, polars as pl\n"
        "pq.read_table(sys.argv[1]); pl.read_parquet(sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(evil)], cwd=REPO, timeout=120, check=False)
    assert not marker.exists()


# -- per-principal limits ------------------------------------------------------------------
def test_active_jobs_per_principal_are_limited(api_service: Service) -> None:
    api_service.add_key("jobber")
    api_service.add_key("neighbour")
    with api_service.client("jobber") as c, api_service.client("neighbour") as other:
        ds = _upload(c)["id"]
        jobs = [_regenerate(c, ds) for _ in range(MAX_ACTIVE_JOBS)]
        r = c.post("/jobs/regenerate", json={"dataset_id": ds})
        err = assert_error(r, 429, "too_many_requests")
        assert f"limit {MAX_ACTIVE_JOBS} per principal" in err["message"]
        assert int(r.headers["retry-after"]) > 0
        # train and compare count too; nothing was queued by the refusals
        assert_error(c.post("/jobs/train", json={"dataset_id": ds}), 429)
        assert c.get("/jobs", params={"state": "queued"}).json()["total"] == MAX_ACTIVE_JOBS
        # another principal is not affected
        _regenerate(other, _upload(other)["id"])
        # a slot frees up when a job ends
        assert c.post(f"/jobs/{jobs[0]['id']}/cancel").status_code == 202
        _regenerate(c, ds)


def _sized(n: int) -> bytes:
    """``n`` bytes of CSV-looking text. Above the synchronous-validation size
    an upload is stored at once and validated by a job (none runs here), so
    exactly these bytes count against the quota."""
    return (b"u1,i1,1\n" * (n // 8 + 1))[:n]


def test_stored_bytes_per_principal_are_limited(api_service: Service) -> None:
    api_service.add_key("hoarder")
    left = 70_000
    with api_service.client("hoarder") as c:
        first = c.post("/datasets", files={"file": ("a.csv", _sized(QUOTA - left))})
        assert first.status_code == 202, first.text
        before = files_under(api_service.store_dir / "datasets")
        # larger than what is left: refused while streaming, nothing kept
        r = c.post("/datasets", files={"file": ("b.csv", _sized(left + 1))})
        err = assert_error(r, 413, "too_large")
        assert f"the remaining storage quota of {left} bytes (of {QUOTA})" in err["message"]
        assert files_under(api_service.store_dir / "datasets") == before
        # exactly what is left fits; after it every upload is refused before
        # its body is read
        assert c.post("/datasets", files={"file": ("c.csv", _sized(left))}).status_code == 202
        r = c.post("/datasets", files={"file": ("d.csv", TINY_CSV)})
        err = assert_error(r, 413, "quota_exceeded")
        assert f"{QUOTA} of {QUOTA} bytes used" in err["message"]
        # deleting frees the space (its validation job is cancelled first)
        assert c.post(f"/jobs/{first.json()['validation_job_id']}/cancel").status_code == 202
        assert c.delete(f"/datasets/{first.json()['id']}").status_code == 204
        assert c.post("/datasets", files={"file": ("d.csv", TINY_CSV)}).status_code == 201
