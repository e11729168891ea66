"""Columns: map the roles user / item / time / rating to the data's columns
(by name or position) and tell whether the first line is a header."""

from __future__ import annotations

from datetime import datetime

from models.data.errors import ColumnError

ColumnRef = str | int


def _resolve_columns(
    names: list[str], header: bool, cols: dict, label: str | None
) -> dict[str, str | None]:
    """Map the roles user/item/time/rating to actual column names."""
    positional = {"user": 0, "item": 1, "time": len(names) - 1, "rating": 2}
    out: dict[str, str | None] = {}
    missing = []
    for role, ref in cols.items():
        if ref is None:
            out[role] = None
        elif isinstance(ref, int):
            if not 0 <= ref < len(names):
                raise ColumnError(
                    f"{role} column position {ref} is out of range: the data has "
                    f"{len(names)} columns",
                    file=label,
                )
            out[role] = names[ref]
        elif header:
            if ref not in names:
                missing.append(ref)
            out[role] = ref
        else:
            if len(names) not in (3, 4) and not (len(names) == 2 and role in ("user", "item")):
                raise ColumnError(
                    f"found {len(names)} columns and no header; the default layout is "
                    "user,item[,rating],timestamp: pass column positions, a header, or "
                    "time_col=None to use the file order as time",
                    file=label,
                )
            if role == "rating" and len(names) < 4:
                missing.append(str(ref))
            out[role] = names[positional[role]]
    if missing:
        found = ", ".join(repr(n) for n in names)
        hint = "" if header else " (the file has no header: columns are taken by position)"
        raise ColumnError(
            f"missing column(s) {', '.join(repr(m) for m in missing)}; found {found}{hint}",
            file=label,
        )
    return out


def _looks_like_value(field: str) -> bool:
    field = field.strip().strip('"')
    try:
        float(field)
        return True
    except ValueError:
        pass
    try:
        datetime.fromisoformat(field)
        return True
    except ValueError:
        return False


def _sniff_header(first: list[str], second: list[str] | None, cols: dict) -> bool:
    wanted = {v for v in cols.values() if isinstance(v, str)}
    if wanted & {f.strip().strip('"') for f in first}:
        return True
    if second is None:
        return False
    return not any(map(_looks_like_value, first)) and any(map(_looks_like_value, second))
