"""Command-line options generated from the typed schemas, so flags and schemas cannot drift apart.

The RoPE group: every field of :class:`longqa.config.recipe.RopeConfig` becomes one flag, the same in
every command that takes a RoPE spec (``eval *``, ``analyze *``, ``rope show``, ``generate``):
``method`` is ``--rope``, every other field ``--rope-<field>`` (``rope.factor`` in a recipe is
``--rope-factor`` on the command line). A new command takes the whole group with one decorator::

    @app.command("my-eval")
    @rope_options
    def my_eval(model: str = "smollm2-135m", rope: RopeConfig | None = None) -> None:
        ...  # rope: the validated spec, or None when no --rope was given

A value given without ``--rope METHOD`` is an error naming the flag (never silently ignored).
:func:`schema_parameter` (one pydantic field → one typer parameter) and :func:`add_parameters` (a
generated group in a command's signature, handed to the command as one value) also give
``build-data`` its flags, from each dataset builder's ``Options`` model.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError

F = TypeVar("F", bound=Callable[..., Any])

ROPE_PANEL = "RoPE scaling (RopeConfig fields; unset = the model's or the adapter's)"
_SCALARS = (bool, int, float, str, Path)


def flag_name(field: str, prefix: str = "") -> str:
    """``original_max_position_embeddings`` → ``--original-max-position-embeddings``."""
    return "--" + prefix + field.replace("_", "-")


def rope_flag(field: str) -> str:
    """The flag of a :class:`RopeConfig` field: ``--rope`` for the method, else ``--rope-<field>``."""
    return "--rope" if field == "method" else flag_name(field, "rope-")


def cli_type(annotation: Any) -> Any:
    """The command-line type of a schema annotation: ``X | None`` → ``X``; scalars, ``Path``,
    ``Literal`` and ``list[...]`` of those are kept; anything else is read as text."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return cli_type(rest[0]) if len(rest) == 1 else str
    if origin is Literal or annotation in _SCALARS:
        return annotation
    if origin is list and len(args) == 1:
        return list[cli_type(args[0])]
    return str


def schema_parameter(
    name: str, annotation: Any, flag: str, help: str, panel: str
) -> inspect.Parameter:
    """A keyword-only typer parameter (default ``None`` = not given) for one schema field."""
    decls = [f"{flag}/--no-{flag[2:]}"] if annotation is bool else [flag]
    option = typer.Option(*decls, help=help, rich_help_panel=panel, show_default=False)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[annotation | None, option],
    )


def add_parameters(
    func: F,
    receiver: str,
    extra: list[inspect.Parameter],
    build: Callable[[dict[str, Any]], Any],
) -> F:
    """``func`` with parameter ``receiver`` replaced by the ``extra`` (generated) parameters in the
    signature typer reads; at call time ``build({name: value})`` of the extra ones is passed to
    ``func`` as ``receiver``. One implementation for every schema-generated option group."""
    sig = inspect.signature(func, eval_str=True)
    if receiver not in sig.parameters:
        raise TypeError(f"{func.__name__} has no parameter '{receiver}' to receive the options")
    kept = [p for p in sig.parameters.values() if p.name != receiver]
    signature = sig.replace(parameters=[*kept, *extra])

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = {p.name: kwargs.pop(p.name, None) for p in extra}
        return func(*args, **{receiver: build(values)}, **kwargs)

    command.__signature__ = signature  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return command  # type: ignore[return-value]


def _rope_parameters() -> list[inspect.Parameter]:
    params = []
    for field, info in RopeConfig.model_fields.items():
        shown = field != "method" and info.default is not None
        default = f" (default {info.default})" if shown else ""
        params.append(
            schema_parameter(
                f"rope_{field}",
                cli_type(info.annotation),
                rope_flag(field),
                (info.description or field.replace("_", " ")) + default,
                ROPE_PANEL,
            )
        )
    return params


def rope_config_from_flags(values: dict[str, Any]) -> RopeConfig | None:
    """RoPE group flag values (keyed by field, ``None`` = not given) → a validated spec.

    No ``--rope``: ``None`` (the model's or the adapter's RoPE), or an error naming the flags that
    were given anyway. Invalid values: one-line errors naming the flag.
    """
    from longqa.config.rope_spec import rope_spec_from_options

    method = values.get("method")
    given = {k: v for k, v in values.items() if k != "method" and v is not None}
    if method is None:
        if given:
            flags = ", ".join(rope_flag(k) for k in given)
            verb = "needs" if len(given) == 1 else "need"
            raise LongqaError(f"{flags} {verb} --rope METHOD (e.g. --rope yarn)")
        return None
    try:
        return rope_spec_from_options(method, **given)
    except LongqaError as exc:
        text = str(exc)
        for field in sorted(given, key=len, reverse=True):  # "rope factor" → "--rope-factor"
            pattern = rf"(?:rope )?'?(?<![\w-]){re.escape(field)}'?(?![\w-])"
            text = re.sub(pattern, rope_flag(field), text)
        raise LongqaError(text) from None


def rope_options(func: F) -> F:
    """Decorator: add the RoPE option group to a typer command; ``func`` receives the validated
    spec in its ``rope`` parameter (``None`` when ``--rope`` is not given)."""

    def build(values: dict[str, Any]) -> RopeConfig | None:
        return rope_config_from_flags({k.removeprefix("rope_"): v for k, v in values.items()})

    return add_parameters(func, "rope", _rope_parameters(), build)
