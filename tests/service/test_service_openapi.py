"""/openapi.json documents every request field: no untyped object anywhere in a
request body, and every field of the job bodies has a type, a default (unless
required), a description and, for numbers, a range."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.settings import Settings
from app.main import create_app

JOB_BODIES = ("RegenerateRequest", "TrainRequest", "CompareRequest")


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"), migrate_on_start=False)
    return create_app(settings).openapi()


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return node


def _walk(schema: dict[str, Any], node: Any, path: str, seen: set[str]):
    """Yield (path, node) for every schema node reachable from ``node``."""
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return
        seen = seen | {name}
        node = _resolve(schema, node)
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(schema, sub, f"{path}.{name}", seen)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(node.get(key, [])):
            yield from _walk(schema, sub, f"{path}<{key}{i}>", seen)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(schema, node[key], f"{path}[]", seen)


def _request_bodies(schema: dict[str, Any]):
    for route, operations in schema["paths"].items():
        for method, op in operations.items():
            for media in op.get("requestBody", {}).get("content", {}).values():
                yield f"{method.upper()} {route}", media["schema"]


def test_no_request_body_holds_an_untyped_object(schema) -> None:
    bodies = list(_request_bodies(schema))
    assert len(bodies) >= 4  # the upload and the three job bodies
    untyped = []
    for where, body in bodies:
        for path, node in _walk(schema, body, where, set()):
            is_object = node.get("type") == "object" or (
                "type" not in node and not any(k in node for k in ("anyOf", "oneOf", "allOf", "enum", "const"))
            )
            if not is_object:
                continue
            extra = node.get("additionalProperties")
            if not node.get("properties") and not isinstance(extra, dict):
                untyped.append(path)
    assert not untyped, f"untyped objects in request bodies: {untyped}"


def _branches(node: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property."""
    options = node.get("anyOf") or [node]
    return [_resolve(schema, o) for o in options if o.get("type") != "null"]


def test_every_job_body_field_has_type_default_range_and_description(schema) -> None:
    problems = []
    checked = 0
    for body in JOB_BODIES:
        for path, node in _walk(schema, {"$ref": f"#/components/schemas/{body}"}, body, set()):
            required = set(node.get("required", ()))
            for name, prop in node.get("properties", {}).items():
                checked += 1
                where = f"{path}.{name}"
                if not prop.get("description") and not _resolve(schema, prop).get("description"):
                    problems.append(f"{where}: no description")
                if name not in required and "default" not in prop:
                    problems.append(f"{where}: no default")
                for branch in _branches(prop, schema):
                    kind = branch.get("type")
                    if kind is None and not ("enum" in branch or "const" in branch or "properties" in branch):
                        problems.append(f"{where}: no type")
                    if kind in ("integer", "number"):
                        low = "minimum" in branch or "exclusiveMinimum" in branch
                        high = "maximum" in branch or "exclusiveMaximum" in branch
                        if not (low and high):
                            problems.append(f"{where}: no range")
    assert checked > 100, checked  # regenerator, personalizer and model overrides are documented
    assert not problems, "\n".join(problems)


def test_closed_choices_are_enums(schema) -> None:
    components = schema["components"]["schemas"]
    train = components["TrainRequest"]["properties"]
    assert set(_resolve(schema, train["model"])["enum"]) == {"sasrec", "gru4rec", "fmlp", "gnn", "cl4srec"}
    compare = components["CompareRequest"]["properties"]
    assert set(_resolve(schema, compare["variants"]["items"])["enum"]) == {"original", "dr4sr", "dr4sr+"}
    regen = _resolve(schema, components["RegenerateRequest"]["properties"]["parameters"])
    assert regen["properties"]["alpha"]["minimum"] == 2 and regen["properties"]["alpha"]["maximum"] == 10
    assert "Mining window" in regen["properties"]["alpha"]["description"]
    overrides = _resolve(schema, regen["properties"]["regenerator"])
    assert {"d_model", "num_memories", "decode_policy"} <= set(overrides["properties"])


def test_the_openapi_document_is_served(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    with TestClient(create_app(Settings(data_dir=tmp_path, migrate_on_start=False))) as c:
        r = c.get("/openapi.json")
    assert r.status_code == 200 and "RegenerationConfig" in r.json()["components"]["schemas"]
