"""The one converter from the row formats people have to longqa records (conversations or text).

Usage::

    from longqa.data.formats import convert_row, detect_row_format
    rec = convert_row({"instruction": "Add", "input": "1+1", "output": "2"}, "auto", "a.json: item 1")
    rec.messages, rec.format, rec.id           # [{"role": "user", …}, …], "alpaca", "alpaca-…"

Row formats (``fmt="auto"`` decides per row; :data:`FORMATS` are the names to force one):

* ``messages`` — ``{"messages": [{"role", "content"}, …]}``, optionally with the builders' ``id``,
  ``task``, ``lang``, ``meta`` (``longqa/data/schema.py``); or ``{"text": …}`` for pretraining.
* ``openai`` — OpenAI fine-tuning rows: ``messages`` with OpenAI fields. ``developer`` counts as
  ``system``; ``"weight": 0`` marks an assistant turn untrained; ``content`` may be a list of
  ``{"type": "text", "text"}`` parts (joined) or ``null`` on an assistant turn with ``tool_calls``
  (``[{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}]``, or the older
  ``function_call``); ``tool`` (``function``) turns carry tool results (context, never trained);
  the row's ``tools`` (or older ``functions``) list defines the tools. The tool parts are rendered
  by :mod:`longqa.data.tool_calls`. A part that is not text (an image) is a bad row.
* ``sharegpt`` — ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}``;
  LLaMA-Factory's tool turns too: ``function_call`` (its value the JSON call ``{"name",
  "arguments"}`` or a list of them), ``observation`` (the result), and ``tools`` (a JSON string).
* ``alpaca`` — ``{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], …]}``.
* ``columns`` — one prompt and one response column, as CSV/TSV tables and Q&A sets name them:
  ``prompt``/``response``, ``prompt``/``completion``, ``question``/``answer``, ``query``/``response``,
  ``instruction``/``response`` (plus ``context``, appended to the prompt), ``input``/``output``;
  a ``system`` column becomes the system turn. Other names: ``columns=("q", "a"[, "sys"])``
  (``--data-columns q,a[,sys]``).
* ``text`` — ``{"text": …}`` (a document, trained on every token).

A row without ``id`` gets one from a hash of its content. Anything else raises :class:`BadRow`: one
line naming where (``file:line``), the field and what was expected, plus a short ``reason`` code that
``build-data --task mix`` counts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.bad_rows import BadRow
from longqa.data.tool_calls import calls_from_text, parse_tool_calls, parse_tools, text_content

__all__ = ["FORMATS", "ROLES", "BadRow", "Record", "convert_row", "detect_row_format"]

FORMATS = ("messages", "openai", "sharegpt", "alpaca", "columns", "text")

# Every role name any supported format uses → system / user / assistant (the one role table).
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}
_SAMPLE_KEYS = {"id", "task", "lang", "messages", "text", "meta"}
_OPENAI_ROW_KEYS = {"tools", "functions", "parallel_tool_calls"}
_OPENAI_TURN_KEYS = {"name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
# LLaMA-Factory's ShareGPT tool turns: a call (its value the JSON call) and its result
SHAREGPT_TOOL_ROLES = {"function_call": "assistant", "observation": "tool"}
# (prompt column, response column) pairs the ``columns`` format recognises, in this order
COLUMN_PAIRS = (
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("query", "response"),
    ("instruction", "response"),
    ("input", "output"),
)


@dataclass
class Record:
    """One converted row: a conversation (``messages``) or a document (``text``)."""

    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    source: str = ""  # file:line (or file: item N) of the row
    id: str = ""
    format: str = ""
    tools: list[dict[str, Any]] | None = None  # OpenAI tool definitions of the conversation
    task: str | None = None  # the builders' task name, when the row carries one
    lang: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _is_openai(row: dict[str, Any]) -> bool:
    """Whether a ``messages`` row uses anything only OpenAI's format has (null fields, as Parquet
    writes absent keys, do not count)."""
    if any(row.get(k) is not None for k in _OPENAI_ROW_KEYS):
        return True
    turns = row["messages"] if isinstance(row["messages"], list) else []
    return any(
        isinstance(m, dict)
        and (
            any(m.get(k) is not None for k in _OPENAI_TURN_KEYS)
            or m.get("role") in ("developer", "tool", "function")
            or isinstance(m.get("content"), list)
        )
        for m in turns
    )


def column_pair(row: dict[str, Any]) -> tuple[str, str] | None:
    """The first :data:`COLUMN_PAIRS` pair a row has both columns of."""
    return next(((p, r) for p, r in COLUMN_PAIRS if p in row and r in row), None)


def detect_row_format(row: dict[str, Any]) -> str | None:
    """The format a row is written in, or None when it matches none."""
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and ("output" in row or "response" not in row):
        return "alpaca"
    if "messages" in row:
        return "openai" if _is_openai(row) else "messages"
    if "text" in row:
        return "text"
    if column_pair(row):
        return "columns"
    return None


def parse_columns(columns: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"q,a"`` / ``"q,a,sys"`` (or a list) → the (user, assistant[, system]) column names."""
    if columns is None or columns == "" or columns == []:
        return None
    names = columns.split(",") if isinstance(columns, str) else list(columns)
    names = [n.strip() for n in names]
    if len(names) not in (2, 3) or not all(names):
        raise LongqaError(
            f"--data-columns {','.join(names)}: expected USER,ASSISTANT[,SYSTEM] column names "
            "(e.g. --data-columns question,answer)"
        )
    return tuple(names)


def content_id(fmt: str, payload: Any) -> str:
    """A stable id for a row that has none: the format and a hash of its content."""
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
    return f"{fmt}-{digest.hexdigest()[:12]}"


def convert_row(
    row: Any, fmt: str = "auto", where: str = "", columns: Sequence[str] | None = None
) -> Record:
    """Convert one row (see the module docstring); raises :class:`BadRow`. ``columns`` (user,
    assistant[, system] column names) reads the row as a prompt/response pair."""
    if not isinstance(row, dict):
        raise BadRow(where, None, f"expected a JSON object, got {type(row).__name__}", "bad_line")
    if columns and fmt == "auto":
        fmt = "columns"
    kind = detect_row_format(row) if fmt == "auto" else fmt
    if kind is None:
        keys = ", ".join(sorted(map(str, row))[:8]) or "none"
        raise BadRow(
            where,
            None,
            f"unrecognised sample (fields: {keys}); expected 'messages', 'text', 'conversations', "
            "'instruction'+'output' or prompt/response columns (--data-columns USER,ASSISTANT)",
            "unknown_format",
        )
    if kind not in FORMATS:
        raise LongqaError(f"unknown data format '{kind}'; known: auto, {', '.join(FORMATS)}")
    if kind == "text" or (kind == "messages" and "messages" not in row and "text" in row):
        return _text(row, where)  # a builder's pretraining row is also a valid "messages" row
    if kind == "columns":
        messages = _from_columns(row, where, columns)
    else:
        messages = {
            "messages": _from_messages,
            "openai": _from_messages,
            "sharegpt": _from_sharegpt,
            "alpaca": _from_alpaca,
        }[kind](row, where)
    if not messages:
        raise BadRow(where, _main_field(kind), "empty conversation", "empty")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow(where, _main_field(kind), "no assistant turn", "no_answer")
    tools = parse_tools(row, where) if kind in ("openai", "messages", "sharegpt") else None
    return _record(row, kind, where, messages=messages, tools=tools)


def _main_field(kind: str) -> str:
    return {"sharegpt": "conversations", "alpaca": "output"}.get(kind, "messages")


def _text(row: dict[str, Any], where: str) -> Record:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRow(where, "text", "expected a non-empty string", "bad_text")
    return _record(row, "text", where, text=text)


def _record(
    row: dict[str, Any], kind: str, where: str, tools: Any = None, **content: Any
) -> Record:
    """A :class:`Record` of ``content`` (messages or text) with the row's id/task/lang/meta."""
    rid, task, lang, meta = (row.get(k) for k in ("id", "task", "lang", "meta"))
    return Record(
        **content,
        tools=tools or None,
        source=where,
        id=str(rid) if rid not in (None, "") else content_id(kind, next(iter(content.values()))),
        format=kind,
        task=task if isinstance(task, str) else None,
        lang=lang if isinstance(lang, str) else None,
        meta=meta if isinstance(meta, dict) else {},
    )


def _turn(role: Any, content: Any, where: str, path: str, role_key: str) -> dict[str, Any]:
    mapped = ROLES.get(str(role).lower()) if isinstance(role, str) else None
    if mapped is None:
        known = "system, developer, user, assistant, tool (or human, gpt)"
        raise BadRow(where, f"{path}.{role_key}", f"unknown role {role!r}; expected {known}", (
            "unknown_role"
        ))  # fmt: skip
    return {"role": mapped, "content": text_content(content, where, path)}


def _from_messages(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    turns = row.get("messages")
    if not isinstance(turns, list):
        raise BadRow(where, "messages", "expected a list of {role, content}", "bad_messages")
    out = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict):
            raise BadRow(where, f"messages.{i}", "expected {role, content}", "bad_messages")
        path = f"messages.{i}"
        msg: dict[str, Any] = _turn(m.get("role"), m.get("content"), where, path, "role")
        if msg["role"] == "assistant":
            calls = parse_tool_calls(m, where, path)
            if calls:
                msg["tool_calls"] = calls
            if m.get("weight") in (0, 0.0):
                msg["weight"] = 0
        elif msg["role"] == "tool":
            for key in ("tool_call_id", "name"):
                if isinstance(m.get(key), str):
                    msg[key] = m[key]
        if msg["content"] is None and not msg.get("tool_calls"):
            why = "expected a string content (null only on an assistant turn with tool_calls)"
            raise BadRow(where, f"{path}.content", why, "bad_turn")
        msg["content"] = msg["content"] or ""
        out.append(msg)
    return out


def _from_sharegpt(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise BadRow(
            where, "conversations", "expected a list of {from, value}", "bad_conversations"
        )
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadRow(where, f"conversations.{i}", "expected {from, value}", "bad_conversations")
        role_key = "from" if "from" in t else "role"
        content = t.get("value", t.get("content"))
        role = SHAREGPT_TOOL_ROLES.get(t.get(role_key), t.get(role_key))
        turn = _turn(role, content, where, f"conversations.{i}", role_key)
        if t.get(role_key) == "function_call":  # LLaMA-Factory: the call as JSON text
            turn = {**turn, "content": "", "tool_calls": calls_from_text(
                turn["content"], where, f"conversations.{i}.value"
            )}  # fmt: skip
        if turn["content"] is None:
            raise BadRow(where, f"conversations.{i}", "expected a string value", "bad_turn")
        out.append(turn)
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not (out and out[0]["role"] == "system"):
        out.insert(0, {"role": "system", "content": system})
    return out


def _from_alpaca(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    instruction, extra, output = row.get("instruction"), row.get("input") or "", row.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRow(where, "instruction", "expected a non-empty string", "bad_alpaca")
    if not isinstance(extra, str):
        raise BadRow(where, "input", "expected a string", "bad_alpaca")
    if not isinstance(output, str):
        raise BadRow(where, "output", "expected a string", "bad_alpaca")
    out: list[dict[str, Any]] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        out.append({"role": "system", "content": system})
    for i, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(
            isinstance(x, str) for x in pair
        )):  # fmt: skip
            raise BadRow(where, f"history.{i}", "expected [user, assistant] strings", "bad_alpaca")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
    return [*out, {"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _cell(row: dict[str, Any], name: str, where: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a numeric answer column
    if not isinstance(value, str):
        raise BadRow(where, name, f"expected a string, got {type(value).__name__}", "bad_columns")
    return value


def _from_columns(
    row: dict[str, Any], where: str, columns: Sequence[str] | None
) -> list[dict[str, Any]]:
    if columns:
        user_col, answer_col = columns[0], columns[1]
        system_col = columns[2] if len(columns) > 2 else None
    else:
        pair = column_pair(row)
        if pair is None:
            names = ", ".join("/".join(p) for p in COLUMN_PAIRS)
            raise BadRow(where, None, f"expected one of the column pairs {names}", "bad_columns")
        (user_col, answer_col), system_col = pair, "system"
    for name in (user_col, answer_col):
        if _cell(row, name, where) is None:
            found = ", ".join(sorted(map(str, row))[:8]) or "none"
            raise BadRow(where, name, f"missing or empty (fields: {found})", "bad_columns")
    prompt, answer = _cell(row, user_col, where) or "", _cell(row, answer_col, where) or ""
    context = _cell(row, "context", where) if not columns else None
    if context and context.strip():
        prompt = f"{prompt.strip()}\n\n{context.strip()}"
    system = _cell(row, system_col, where) if system_col else None
    out = [{"role": "system", "content": system}] if system and system.strip() else []
    return [*out, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
