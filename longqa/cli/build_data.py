"""`longqa build-data --task TASK ...`: run one dataset builder of ``data_builders.registry``.

The flags are generated from the builders' ``Options`` models (pydantic, ``extra="forbid"``): every
field of every builder is a ``--kebab-case`` flag, with its description and per-task default as help
(``longqa build-data --help``; ``--task T --describe`` prints one task's behaviour and options).
The flags the user sets are validated against the chosen task's ``Options``, so a flag another task
does not know fails with a one-line "``--turns`` is not an option of task book-summary" error.
``--opt key=value`` (repeatable; values parsed as YAML) sets any option too. Adding a builder needs
no change here: its ``Options`` fields become flags.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from data_builders.registry import available_builders
from longqa.cli.options import add_parameters, cli_type, flag_name, schema_parameter
from longqa.core.errors import LongqaError

SHARED_PANEL = "Options of several tasks (default per task)"
_TASKS = available_builders()


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LongqaError(f"--opt '{pair}': expected key=value")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key.strip().replace("-", "_")] = value
    return out


def _flag(name: str) -> str:
    return flag_name(name)


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _merged_type(types: list[Any]) -> Any:
    """One command-line type for a field several builders declare (``str`` when they disagree)."""
    if any(_is_list(t) for t in types):
        return list[str]  # repeatable; builders split comma-separated values themselves
    if all(typing.get_origin(t) is Literal for t in types):
        return Literal[tuple(dict.fromkeys(v for t in types for v in typing.get_args(t)))]
    kinds = set(types)
    if len(kinds) == 1:
        return types[0]
    return float if kinds <= {int, float} else str


def _builder_fields() -> dict[str, list[tuple[str, Any]]]:
    """Field name → ``[(task, pydantic FieldInfo), ...]`` over every registered builder."""
    from data_builders.registry import available_builders, get_builder_module

    fields: dict[str, list[tuple[str, Any]]] = {}
    for task in available_builders():
        for name, info in get_builder_module(task).Options.model_fields.items():
            fields.setdefault(name, []).append((task, info))
    return fields


def _help(entries: list[tuple[str, Any]], n_tasks: int) -> str:
    """Description(s) and per-task defaults of one flag."""
    by_desc: dict[str, list[str]] = {}
    for task, info in entries:
        if info.description:
            by_desc.setdefault(info.description, []).append(task)
    if len(by_desc) > 1:
        desc = "; ".join(f"{', '.join(tasks)}: {d}" for d, tasks in by_desc.items())
    else:
        desc = next(iter(by_desc), "")
    by_default: dict[str, list[str]] = {}
    for task, info in entries:
        shown = "unset" if info.default is None else info.default
        default = "required" if info.is_required() else f"default {shown}"
        by_default.setdefault(default, []).append(task)
    if len(by_default) == 1:
        scope = ", all tasks" if len(entries) == n_tasks else ""
        parts = [f"{next(iter(by_default))}{scope}"]
    else:
        parts = [f"{', '.join(tasks)}: {default}" for default, tasks in by_default.items()]
    return f"{desc} ({'; '.join(parts)})".strip()


def _builder_parameters() -> list[Any]:
    from data_builders.registry import available_builders

    n_tasks = len(available_builders())
    params = []
    for name, entries in _builder_fields().items():
        annotation = _merged_type([cli_type(info.annotation) for _, info in entries])
        panel = SHARED_PANEL if len(entries) > 1 else f"Options of task {entries[0][0]}"
        params.append(
            schema_parameter(
                f"builder_{name}", annotation, _flag(name), _help(entries, n_tasks), panel
            )
        )
    return params


def given_options(params: dict[str, Any]) -> dict[str, Any]:
    """The builder flags a command line set (``builder_<field>`` parameters), keyed by field."""
    return {
        name.removeprefix("builder_"): value
        for name, value in params.items()
        if name.startswith("builder_") and value not in (None, [], ())
    }


def builder_options(func: Any) -> Any:
    """Decorator: one flag per builder ``Options`` field; ``func`` receives the given ones (not
    ``None``) as a dict in its ``options`` parameter."""
    return add_parameters(func, "options", _builder_parameters(), given_options)


def fit_to_task(task: str, given: dict[str, Any]) -> dict[str, Any]:
    """Flag values shaped for ``task``'s Options: paths as text, repeatable flags as one value
    where the task takes one."""
    from data_builders.registry import get_builder_module

    fields = get_builder_module(task).Options.model_fields
    out: dict[str, Any] = {}
    for name, value in given.items():
        if (
            isinstance(value, list)
            and name in fields
            and not _is_list(cli_type(fields[name].annotation))
        ):
            if len(value) > 1:
                raise LongqaError(f"`{_flag(name)}` takes one value for task {task} (got {value})")
            value = value[0]
        out[name] = str(value) if isinstance(value, Path) else value
    return out


def validate_options(task: str, values: dict[str, Any]) -> Any:
    """The builder's ``Options`` for ``values``; bad/unknown/missing flags become one-line errors."""
    from pydantic import ValidationError

    from data_builders.registry import get_builder_module

    module = get_builder_module(task)
    try:
        return module.Options.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        name = str(err["loc"][0]) if err["loc"] else "<options>"
        if err["type"] == "extra_forbidden":
            known = ", ".join(_flag(f) for f in module.Options.model_fields)
            raise LongqaError(
                f"`{_flag(name)}` is not an option of task {task} (its options: {known})"
            ) from None
        if err["type"] == "missing":
            raise LongqaError(f"`{_flag(name)}` is required for task {task}") from None
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:
            raise LongqaError(f"task {task}: {msg}") from None
        raise LongqaError(f"`{_flag(name)}`: {msg} (got {err.get('input')!r})") from None


def run_builder(task: str, values: dict[str, Any]) -> dict[str, Any]:
    """Validate ``values`` for ``task`` and run its builder (what the CLI does; notebooks too)."""
    from data_builders.registry import get_builder
    from longqa.core.folder_lock import output_lock

    options = validate_options(task, values)
    out = getattr(options, "out", None)
    if not out:
        return get_builder(task)(options)
    with output_lock(out):  # one build per output folder (a second one stops with one line)
        return get_builder(task)(options)


@builder_options
def build_data(
    task: Annotated[
        Literal[tuple(_TASKS)],  # type: ignore[valid-type]
        typer.Option(help="the dataset builder to run"),
    ],
    describe: Annotated[
        bool,
        typer.Option(
            "--describe", help="print the task's behaviour and all its options, then exit"
        ),
    ] = False,
    opt: Annotated[
        list[str] | None, typer.Option(help="any option of the task as key=value (repeatable)")
    ] = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Build a training dataset: `longqa build-data --task paraphrase-mdqa --corpus DIR --out DIR`.

    Flags not known to the chosen task are errors; `--task T --describe` lists the task's options.
    """
    if describe:
        from data_builders.registry import describe_builder

        print(describe_builder(task))
        return
    given = fit_to_task(task, options or {})
    extra = _parse_opts(opt or [])
    clash = sorted(set(extra) & set(given))
    if clash:
        raise LongqaError(f"`{_flag(clash[0])}` given both as a flag and as --opt")
    stats = run_builder(task, {**given, **extra})
    _report(task, stats, given.get("out") or extra.get("out"))


def _task_list() -> str:
    from data_builders.registry import summarize_builder

    return "\n\n".join(f"{task}: {summarize_builder(task)}" for task in _TASKS)


build_data.__doc__ = f"{build_data.__doc__}\n\nTasks:\n\n{_task_list()}"


def _report(task: str, stats: dict[str, Any], out: Any) -> None:
    from rich.console import Console

    keys = (
        "samples",
        "requested",
        "shortfall",
        "dropped_samples",
        "turns",
        "effective_token_share",
    )
    shown = ", ".join(f"{k}={stats[k]}" for k in keys if k in stats)
    Console(stderr=True).print(f"[bold green]{task}[/] done → {out}: {shown}")
