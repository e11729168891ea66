"""Property-based fuzzing of every endpoint from the running API's own
OpenAPI schema (schemathesis): valid and deliberately invalid requests must
never produce a 5xx, every response must match what the schema documents
(status, content type, body), and every error must have the common shape
``{"error": {"code", "message", "field"?}}``.

Bounded for CI: FUZZ_EXAMPLES cases per operation and generation mode
(override with DR4SR_FUZZ_EXAMPLES for a longer run)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from reliability_harness import Service
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.service

FUZZ_EXAMPLES = int(os.environ.get("DR4SR_FUZZ_EXAMPLES", "10"))
GOOD = [f"u{u},i{(u * 7 + t * 3) % 12},{1000 + t}" for u in range(30) for t in range(8)]
TINY_CSV = ("user_id,item_id,timestamp\n" + "\n".join(GOOD) + "\n").encode()
ERROR_KEYS = {"code", "message", "field"}


@schemathesis.check
def error_shape(ctx, response, case) -> bool | None:
    """4xx/5xx bodies are {"error": {"code": str, "message": str, "field"?: str}}."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    error = body["error"]
    assert set(error) <= ERROR_KEYS and {"code", "message"} <= set(error), error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert error.get("field") is None or isinstance(error["field"], str), error
    # only /readyz adds its checks beside the error object
    assert set(body) == {"error"} or case.path == "/readyz", body
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_shape,
]


def _fuzz(
    operation,
    mode,
    base_url: str,
    auth: dict,
    counts: Counter,
    statuses: Counter,
    path_parameters: dict | None = None,
) -> None:
    label = f"{operation.label} ({mode.value}{', own ids' if path_parameters else ''})"

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def fuzz(case) -> None:
        response = case.call(base_url=base_url, headers=auth, timeout=60)
        counts[label] += 1
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=auth)

    try:
        fuzz()
    except Unsatisfiable:
        # nothing to make invalid (no parameters, no body): positive cases cover it
        assert mode is GenerationMode.NEGATIVE and counts[label] == 0, label
    except Exception as exc:  # name the operation: hypothesis shows only the case
        raise AssertionError(f"{label}: {exc}") from exc


def test_every_operation_survives_fuzzing(api_service: Service, record_property) -> None:
    key = api_service.add_key("fuzzer")
    auth = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(f"{api_service.base_url}/openapi.json")
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 16
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, api_service.base_url, auth, counts, statuses)

    # again with ids that exist (a ready dataset, a queued job of the
    # fuzzer's own), so the generated queries and bodies reach past the lookup
    with api_service.client("fuzzer") as c:
        ds = c.post("/datasets", files={"file": ("ok.csv", TINY_CSV)}).json()["id"]
        job = c.post("/jobs/regenerate", json={"dataset_id": ds}).json()["id"]
    own = {"dataset_id": ds, "job_id": job}
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        if names:
            ids = {name: own[name] for name in names}
            _fuzz(
                operation,
                GenerationMode.POSITIVE,
                api_service.base_url,
                auth,
                counts,
                statuses,
                ids,
            )

    total = sum(counts.values())
    record_property("fuzz_cases", total)
    print(
        f"schemathesis: {total} cases over {len(operations)} operations; statuses {dict(statuses)}"
    )
    assert total >= len(operations) * 2
    assert not [s for s in statuses if s >= 500]
