"""The dotted keys of a typed schema, and the key a mistyped one most likely meant.

Usage::

    from longqa.config.keys import nearest_key
    nearest_key(Recipe, "data.max_length")   # 'train.max_length'
    nearest_key(Recipe, "train.lrr")         # 'train.lr'

Used by the recipe loader so that ``--set data.max_length=512`` (or the same key in a YAML file)
fails with "unknown key … (did you mean train.max_length?)". The same field name in another
section wins over a spelling match (``difflib``); list items are addressed by index
(``train.phases.0.steps``).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The pydantic models an annotation holds, each with whether it sits inside a list."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
    elif origin is list:
        for model, _ in _models_in(typing.get_args(annotation)[0]):
            yield model, True
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model`` (sections and leaves; ``N`` stands for a list index)."""
    keys = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        for sub, in_list in _models_in(info.annotation):
            keys += schema_keys(sub, f"{key}.N." if in_list else f"{key}.")
    return keys


def nearest_key(model: type[BaseModel], key: str) -> str | None:
    """The schema key ``key`` most likely meant, or None when nothing is close."""
    parts = key.split(".")
    generic = ".".join("N" if p.isdigit() else p for p in parts)
    keys = [k for k in schema_keys(model) if k != generic]
    same_leaf = [k for k in keys if k.split(".")[-1] == parts[-1]]
    found = same_leaf[:1] or difflib.get_close_matches(generic, keys, n=1, cutoff=0.75)
    if not found:
        return None
    indices = iter(p for p in parts if p.isdigit())
    return ".".join(next(indices, "0") if p == "N" else p for p in found[0].split("."))
