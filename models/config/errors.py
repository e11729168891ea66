"""One message for an invalid value, in the CLI and in the API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError


def error_message(error: Any) -> str:
    """A pydantic error's message without pydantic's 'Value error, ' prefix."""
    msg = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def error_path(loc: Iterable[Any], prefix: str = "") -> str:
    """``("regenerator", "k_memories")`` -> ``"regenerator.k_memories"`` (list
    positions as ``[i]``), under ``prefix`` when given."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out = f"{out}.{part}" if out else str(part)
    return out


def describe_error(exc: ValidationError, prefix: str = "") -> tuple[str | None, str]:
    """``(field path of the first error, one-line message)`` for a config's
    ValidationError; every error reads ``<path>: <message>``, joined by '; '."""
    errors = exc.errors()
    if not errors:
        return (prefix or None), str(exc)
    first = error_path(errors[0]["loc"], prefix) or None
    message = "; ".join(f"{error_path(e['loc'], prefix) or 'value'}: {error_message(e)}" for e in errors)
    return first, message
