"""Where a matrix file is wrong, in its own words: the entry and field of a validation error, and the
field an unknown one is likely a typo of."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["describe_location", "near_name"]


def describe_location(data: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic location like ('engines', 1, 'max_num_seq') into 'engines[1] (id='x'), field ...'."""
    parts: list[str] = []
    node: Any = data
    entry_id = None
    for i, key in enumerate(loc):
        if isinstance(key, int):
            parts[-1] = f"{parts[-1]}[{key}]"
            if isinstance(node, list) and key < len(node):
                node = node[key]
                if isinstance(node, dict) and "id" in node and i < len(loc) - 1:
                    entry_id = node["id"]
            continue
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
    if not parts:
        return "top level"
    where = parts[0]
    if entry_id is not None:
        where += f" (id={entry_id!r})"
    if len(parts) > 1:
        where += ", field " + repr(".".join(parts[1:]))
    return where


def near_name(err: Any, top: type[BaseModel], models: Mapping[str, type[BaseModel]]) -> str:
    """For an unknown field, the known field it is likely a typo of: ``max_num_seq`` -> ``max_num_seqs``."""
    if err.get("type") != "extra_forbidden":
        return ""
    loc = [k for k in err["loc"] if isinstance(k, str)]
    if not loc:
        return ""
    owner = top if len(loc) == 1 else models.get(loc[-2])
    if owner is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(owner.model_fields), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
