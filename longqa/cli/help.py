"""``--help`` that reads at 80 columns: whole flag names, wrapped descriptions, plain type hints.

Usage (``longqa.cli.app`` does this once, at import)::

    from longqa.cli.help import install_help_layout
    install_help_layout()

typer draws each option panel as a table whose columns rich shrinks to the terminal, cutting long
flag names (``--rope-original-max-…``) and printing Python types (``<list[str]>``). This layout
keeps each flag whole: a panel whose names fit beside a 32-column description is drawn as two
columns (name and type | description); otherwise each flag gets its own line and its description
wraps, indented, below it. Types read as click writes them (``INTEGER``, ``FLOAT``, ``TEXT``,
``PATH``, ``a|b`` for a short choice, else ``CHOICE``, ``…`` when the flag repeats).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

_MIN_HELP_WIDTH = 32
_INDENT = 6
_MAX_CHOICES_WIDTH = 32
_TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH", bool: "BOOLEAN"}


def human_type(param: Any) -> str:
    """``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH``, ``a|b`` (a short choice, else ``CHOICE``);
    ``""`` for an on/off flag; ``…`` appended when the option may be given several times."""
    desc = param.type_descriptor
    if getattr(param, "is_flag", False) or desc.annotation is bool:
        return ""
    if desc.is_choice:
        text = "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
        text = text if len(text) <= _MAX_CHOICES_WIDTH else "CHOICE"  # long lists: in the help
    else:
        kind = typing.get_args(desc.annotation)[0] if desc.is_list else desc.annotation
        text = "PATH" if desc.is_path else _TYPE_NAMES.get(kind, "TEXT")
    repeats = desc.is_list or getattr(param, "multiple", False)
    return f"{text} …" if repeats else text


def _names(param: Any) -> str:
    if not param.opts or not param.opts[0].startswith("-"):  # an argument
        return param.display_name_raw.upper()
    names = ", ".join(sorted(param.opts, key=lambda o: (not o.startswith("--"), o)))
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    return names


def _print_options_panel(
    *, name: str, params: list[Any], ctx: Any, markup_mode: Any, console: Any
) -> None:
    from rich.console import Group
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from typer import rich_utils

    if not params:
        return
    rows = []
    for param in params:
        label = Text(_names(param), style=rich_utils.STYLE_OPTION)
        hint = human_type(param)
        if hint:
            label.append("  " + hint, style=rich_utils.STYLE_TYPES)
        if getattr(param, "required", False):
            label.append(" *", style=rich_utils.STYLE_REQUIRED_SHORT)
        help_text = rich_utils._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode)
        rows.append((label, help_text))
    widest = max(len(label.plain) for label, _ in rows)
    inner = console.width - 4  # panel borders and padding
    if widest + 2 + _MIN_HELP_WIDTH <= inner:
        table = Table(show_header=False, box=None, expand=True, padding=(0, 1), pad_edge=False)
        table.add_column(no_wrap=True, width=widest)
        table.add_column(ratio=1)
        for label, help_text in rows:
            table.add_row(label, help_text)
        body: Any = table
    else:
        body = Group(*(Group(label, Padding(text, (0, 0, 0, _INDENT))) for label, text in rows))
    console.print(
        Panel(
            body,
            border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER,
            title=name,
            title_align=rich_utils.ALIGN_OPTIONS_PANEL,
        )
    )


def install_help_layout() -> None:
    """Draw every typer option panel of this process with :func:`_print_options_panel`."""
    from typer import rich_utils

    rich_utils._print_options_panel = _print_options_panel
