"""A small Python client of the DR4SR service, for notebooks and scripts.

```python
from app.client import Client

api = Client("http://127.0.0.1:8000", api_key="...")
ds = api.upload("ratings.csv", user_col="user", item_col="item", time_col="ts")
job = api.regenerate(ds, alpha=5, regenerator_epochs=40).wait()   # progress bar per stage
api.download_regenerated(ds, "parquet", "regenerated.parquet")
run = api.train(ds, data="regenerated", model="sasrec", personalize=True, epochs=200).wait()
print(api.report(run)["test"])
api.checkpoint(run, "sasrec.tar")
```

Errors of the API (``{"error": {"code", "message", "field"}}``) raise typed
exceptions (:class:`InvalidRequest`, :class:`NotFound`, ...) carrying
``status``, ``code``, ``message`` and ``field``. Answers 429 and 503 are
retried with exponential back-off, honouring ``Retry-After``; so are
connection failures of requests that are safe to repeat (GET, DELETE, and the
cancel POST). Built on httpx only: importing this module imports neither
torch nor the server.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ApiError",
    "Client",
    "Conflict",
    "Dataset",
    "InsufficientStorage",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "NotFound",
    "ServerError",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]

FINISHED = ("succeeded", "failed", "cancelled")


# -- errors -------------------------------------------------------------------
class ApiError(Exception):
    """An error answer of the API: HTTP ``status`` and the body's ``code``,
    ``message`` and ``field`` (the request field at fault, when there is one)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 response: httpx.Response | None = None) -> None:
        where = f" [{field}]" if field else ""
        super().__init__(f"{status} {code}{where}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field
        self.response = response


class InvalidRequest(ApiError):
    """422: a parameter, a form field or the uploaded data is invalid."""


class NotFound(ApiError):
    """404: no such dataset or job for this key."""


class Conflict(ApiError):
    """409: the resource's state forbids this (e.g. a job not finished yet)."""


class Unauthorized(ApiError):
    """401: missing or unknown API key."""


class TooLarge(ApiError):
    """413: upload or storage quota too large."""


class UnsupportedMediaType(ApiError):
    """415: the body is not what the route takes."""


class TooManyRequests(ApiError):
    """429: too many active jobs (raised once the retries are spent)."""


class Unavailable(ApiError):
    """503: a dependency of the service is down (raised once the retries are spent)."""


class InsufficientStorage(ApiError):
    """507: the artifact store is full."""


class ServerError(ApiError):
    """Any other 5xx."""


class JobFailed(Exception):
    """``Job.wait()`` on a job that failed or was cancelled."""

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        detail = f"{error.get('type', 'error')}: {error.get('message', '')}" if error else job.state
        super().__init__(f"job {job.id} ({job.kind}) {job.state}: {detail}")
        self.job = job


_ERRORS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: TooManyRequests,
    503: Unavailable,
    507: InsufficientStorage,
}


def error_from(response: httpx.Response) -> ApiError:
    try:
        body = response.json().get("error", {})
    except (ValueError, AttributeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    cls = _ERRORS.get(response.status_code, ServerError if response.status_code >= 500 else ApiError)
    return cls(
        response.status_code,
        str(body.get("code", "error")),
        str(body.get("message", response.text[:200] or response.reason_phrase)),
        body.get("field"),
        response,
    )


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# -- resources ------------------------------------------------------------------
@dataclass
class _Resource:
    """An API object: ``data`` is its full JSON, re-read by :meth:`refresh`."""

    client: Client = field(repr=False)
    data: dict[str, Any]
    _route = ""  # the collection path, e.g. "/datasets"

    @property
    def id(self) -> str:
        return self.data["id"]

    def refresh(self):
        self.data = self.client._json("GET", f"{self._route}/{self.id}")
        return self


@dataclass
class Dataset(_Resource):
    """An uploaded dataset (``data`` is the API's full JSON)."""

    _route = "/datasets"

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def name(self) -> str:
        return self.data["name"]

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Dataset:
        """Until a large upload's validation job has finished; raises
        :class:`JobFailed` naming the problem when the file was invalid."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status == "validating":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"dataset {self.id} still validating after {timeout} s")
            time.sleep(poll)
            self.refresh()
        if self.status == "invalid":
            job_id = self.data.get("validation_job_id")
            job = self.client.job(job_id) if job_id else None
            if job is not None:
                raise JobFailed(job)
            raise ValueError(f"dataset {self.id} is invalid: {self.data.get('error')}")
        return self


@dataclass
class Job(_Resource):
    """A regenerate / train / compare (or validation) job."""

    _route = "/jobs"

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def state(self) -> str:
        return self.data["state"]

    @property
    def error(self) -> dict[str, Any] | None:
        return self.data.get("error")

    @property
    def result(self) -> dict[str, Any] | None:
        return self.data.get("result")

    @property
    def progress(self) -> dict[str, Any]:
        return self.data.get("progress") or {}

    @property
    def done(self) -> bool:
        return self.state in FINISHED

    def children(self) -> list[Job]:
        """A compare job's train jobs (one per model x variant x seed)."""
        return list(self.client.iter_jobs(parent_job_id=self.id))

    def cancel(self) -> Job:
        self.data = self.client._json("POST", f"/jobs/{self.id}/cancel")
        return self

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 1.0,
        progress: bool = True,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job finishes. With ``progress``, a tqdm bar follows
        the job's overall fraction and names the running stage (and its epoch
        and metrics). Raises :class:`JobFailed` for a failed or cancelled job
        (unless ``raise_on_failure`` is false) and ``TimeoutError`` after
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _ProgressBar(self) if progress else None
        try:
            while True:
                if bar is not None:
                    bar.update(self)
                if self.done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
                time.sleep(poll)
                self.refresh()
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and self.state != "succeeded":
            raise JobFailed(self)
        return self


class _ProgressBar:
    """tqdm over 0..100 % of the job; the description is the running stage."""

    def __init__(self, job: Job) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=100, desc=f"{job.kind} {job.id[:8]}", unit="%",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}")
        self.stage: str | None = None

    def update(self, job: Job) -> None:
        prog = job.progress
        target = 100 if job.state == "succeeded" else round(100 * float(prog.get("fraction") or 0.0), 1)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        stage = prog.get("stage")
        if stage and stage != self.stage:
            self.stage = stage
            self.bar.set_description(f"{job.kind} {job.id[:8]} · {stage}")
        info = (prog.get("stages") or {}).get(stage or "", {})
        postfix: dict[str, Any] = {}
        if info.get("epoch") is not None:
            postfix["epoch"] = info["epoch"]
        for name, value in sorted((info.get("metrics") or {}).items())[:3]:
            postfix[name] = f"{value:.4g}" if isinstance(value, float) else value
        if job.done:
            postfix = {"state": job.state}
        if postfix:
            self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        self.bar.close()


def _id(obj: Dataset | Job | str) -> str:
    return obj if isinstance(obj, str) else obj.id


# -- the client -------------------------------------------------------------------
class Client:
    """``Client(url, api_key)``; every method raises an :class:`ApiError`
    subclass for an error answer. ``retries`` attempts more are made on 429,
    503 and connection errors of repeatable requests, waiting ``Retry-After``
    seconds when the server says so and an exponential back-off (``backoff``
    x 2^attempt, at most ``max_backoff``, with jitter) otherwise."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        if http is None:
            http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        http.headers.update(headers)
        self.http = http
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._sleep = sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------
    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        asked = retry_after(response) if response is not None else None
        if asked is not None:
            return min(asked, self.max_backoff)
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)

    def _send(self, method: str, path: str, *, repeatable: bool | None = None,
              make: Callable[[], dict[str, Any]] | None = None, stream: bool = False,
              **kwargs: Any) -> httpx.Response:
        """One request with retries; ``make`` rebuilds per-attempt arguments
        (an upload's reopened file)."""
        repeatable = method in ("GET", "HEAD", "DELETE") if repeatable is None else repeatable
        attempt = 0
        while True:
            extra = make() if make is not None else {}
            try:
                request = self.http.build_request(method, path, **kwargs, **extra)
                response = self.http.send(request, stream=stream)
            except httpx.TransportError:
                if not repeatable or attempt >= self.retries:
                    raise
                self._sleep(self._delay(attempt, None))
                attempt += 1
                continue
            finally:
                for value in extra.get("files", {}).values():
                    handle = value[1] if isinstance(value, tuple) else value
                    if hasattr(handle, "close"):
                        handle.close()
            if response.status_code in (429, 503) and attempt < self.retries:
                response.read()
                response.close()
                self._sleep(self._delay(attempt, response))
                attempt += 1
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                raise error_from(response)
            return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def _download(self, path: str, target: str | Path, params: dict[str, Any] | None = None) -> Path:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        response = self._send("GET", path, params=params, stream=True)
        try:
            with open(partial, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        finally:
            response.close()
        partial.replace(target)
        return target

    # -- datasets ----------------------------------------------------------
    def upload(self, path: str | Path, *, name: str | None = None, format: str | None = None,
               wait: bool = True, **column_mapping: Any) -> Dataset:
        """Upload an interaction log; ``column_mapping`` are the form fields
        (``user_col``, ``item_col``, ``time_col``, ``has_header``, ``delimiter``,
        ``user_core``, ``item_core``, ``max_len``). A large file is validated by
        a job: with ``wait`` this returns once it is ready (raising
        :class:`JobFailed` with the line at fault when it is not)."""
        path = Path(path)
        fields = {"name": name, "format": format, **column_mapping}
        data = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in fields.items() if v is not None}

        def files() -> dict[str, Any]:
            return {"files": {"file": (path.name, open(path, "rb"))}}

        response = self._send("POST", "/datasets", data=data, make=files, repeatable=False)
        dataset = Dataset(self, response.json())
        return dataset.wait() if wait else dataset

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset(self, self._json("GET", f"/datasets/{dataset_id}"))

    def datasets(self, limit: int = 100, offset: int = 0) -> list[Dataset]:
        body = self._json("GET", "/datasets", params={"limit": limit, "offset": offset})
        return [Dataset(self, item) for item in body["items"]]

    def delete(self, dataset: Dataset | str) -> None:
        self._send("DELETE", f"/datasets/{_id(dataset)}")

    def download_regenerated(self, dataset: Dataset | str, format: str = "parquet",
                             path: str | Path | None = None, job: Job | str | None = None) -> Path:
        """The regenerated rows (latest successful regeneration, or ``job``) in
        the dataset's original ids: parquet, jsonl, csv, inter or txt."""
        target = Path(path) if path is not None else Path(f"{_id(dataset)}-regenerated.{format}")
        params = {"format": format, **({"job": _id(job)} if job is not None else {})}
        return self._download(f"/datasets/{_id(dataset)}/regenerated", target, params)

    # -- jobs --------------------------------------------------------------
    def _submit(self, route: str, body: dict[str, Any]) -> Job:
        # a refused submission (429 / 503) stored nothing, so it is safe to repeat
        return Job(self, self._json("POST", route, json=body, repeatable=False))

    def regenerate(self, dataset: Dataset | str, **parameters: Any) -> Job:
        """``POST /jobs/regenerate``: ``parameters`` are RegenerationConfig
        fields (``alpha``, ``beta``, ``profile``, ``regenerator={...}``, ...)."""
        return self._submit("/jobs/regenerate", {"dataset_id": _id(dataset), "parameters": parameters})

    def train(self, dataset: Dataset | str, *, model: str = "sasrec", data: str = "original",
              personalize: bool = False, regeneration: Job | str | None = None, **parameters: Any) -> Job:
        """``POST /jobs/train``; ``parameters`` are TrainJobConfig fields
        (``epochs``, ``loss``, ``personalizer={...}``, ...). ``regeneration``
        (a regenerate job) implies ``data="regenerated"``."""
        body: dict[str, Any] = {"dataset_id": _id(dataset), "model": model, "personalize": personalize,
                                "data": "regenerated" if regeneration is not None else data,
                                "parameters": parameters}
        if regeneration is not None:
            body["regeneration_job_id"] = _id(regeneration)
        return self._submit("/jobs/train", body)

    def compare(self, dataset: Dataset | str, *, models: list[str] | tuple[str, ...] = ("sasrec",),
                variants: list[str] | tuple[str, ...] = ("original", "dr4sr", "dr4sr+"),
                seeds: list[int] | tuple[int, ...] | None = None,
                regeneration: Job | str | None = None, **parameters: Any) -> Job:
        """``POST /jobs/compare``: every model on every data variant, once per
        seed, as one train job each (``job.children()``)."""
        body: dict[str, Any] = {"dataset_id": _id(dataset), "models": list(models),
                                "variants": list(variants), "parameters": parameters}
        if seeds is not None:
            body["seeds"] = list(seeds)
        if regeneration is not None:
            body["regeneration_job_id"] = _id(regeneration)
        return self._submit("/jobs/compare", body)

    def job(self, job_id: str) -> Job:
        return Job(self, self._json("GET", f"/jobs/{job_id}"))

    def jobs(self, **filters: Any) -> list[Job]:
        """``GET /jobs`` (filters: state, kind, dataset_id, parent_job_id, limit, offset)."""
        body = self._json("GET", "/jobs", params={k: v for k, v in filters.items() if v is not None})
        return [Job(self, item) for item in body["items"]]

    def iter_jobs(self, page: int = 100, **filters: Any) -> Iterator[Job]:
        offset = 0
        while True:
            batch = self.jobs(limit=page, offset=offset, **filters)
            yield from batch
            if len(batch) < page:
                return
            offset += page

    def cancel(self, job: Job | str) -> Job:
        return Job(self, self._json("POST", f"/jobs/{_id(job)}/cancel", repeatable=True))

    def report(self, job: Job | str) -> dict[str, Any]:
        """The JSON report of a finished train or compare job (metrics, protocol, history)."""
        return self._json("GET", f"/jobs/{_id(job)}/report")

    def report_html(self, job: Job | str, path: str | Path) -> Path:
        return self._download(f"/jobs/{_id(job)}/report.html", path)

    def checkpoint(self, job: Job | str, path: str | Path) -> Path:
        """The trained model (safetensors weights + config) as a tar file."""
        return self._download(f"/jobs/{_id(job)}/checkpoint", path)

    def topk(self, job: Job | str, path: str | Path) -> Path:
        """Top-k items per test user (parquet, original ids)."""
        return self._download(f"/jobs/{_id(job)}/topk", path)

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/readyz")
