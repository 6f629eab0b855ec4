"""Validating a RoPE spec: recipe sections, saved specs and command-line flags → :class:`RopeConfig`.

Usage::

    from longqa.config.rope_spec import as_rope_spec, rope_spec_from_options
    spec = rope_spec_from_options("yarn", factor=4.0)     # the --rope / --rope-* flags
    spec = as_rope_spec({"method": "linear", "factor": 2})  # a dict read from a file

Every error is one line naming the field (unknown method, factor < 1, a factor the method needs):
the schema's own checks plus the method's parameter checks of
:func:`longqa.ops.rope_scaling.check_params`. The RoPE patch (:mod:`longqa.patch.rope`) validates
through :func:`as_rope_spec` before it touches a model.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.ops.rope_scaling import check_params

_OPTION_ALIASES = {
    "original_length": "original_max_position_embeddings",
    "target_length": "max_position_embeddings",
}


def as_rope_spec(spec: RopeConfig | dict[str, Any]) -> RopeConfig:
    """``spec`` as a validated :class:`RopeConfig` (a one-line :class:`LongqaError` if invalid)."""
    if isinstance(spec, RopeConfig):
        out = spec
    else:
        try:
            check_params(dict(spec))  # clearest messages for the common mistakes
        except (TypeError, ValueError):
            pass  # wrong types: reported by the schema below
        try:
            out = RopeConfig.model_validate(dict(spec))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "rope"
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise LongqaError(f"rope spec: '{loc}': {msg}") from None
    check_params(out.model_dump())
    return out


def rope_spec_from_options(method: str | None, **kw: Any) -> RopeConfig | None:
    """CLI flags → spec. ``None`` method → ``None`` (not set); ``"none"`` → explicit no scaling.

    Keyword names are :class:`RopeConfig` fields, plus ``original_length`` and ``target_length``
    (aliases of ``original_max_position_embeddings`` / ``max_position_embeddings``); ``None`` values
    are ignored. Errors (unknown method, factor < 1, missing factor) are one-line LongqaErrors.
    """
    if method is None or method == "":
        return None
    fields = set(RopeConfig.model_fields)
    values: dict[str, Any] = {"method": method}
    for key, value in kw.items():
        if value is None:
            continue
        name = _OPTION_ALIASES.get(key, key)
        if name not in fields:
            raise LongqaError(f"unknown rope option '{key}'; known: {', '.join(sorted(fields))}")
        values[name] = value
    return as_rope_spec(values)
