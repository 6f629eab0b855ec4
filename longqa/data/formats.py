"""The one converter from the row formats people have to longqa records (conversations or text).

Usage::

    from longqa.data.formats import convert_row, detect_row_format
    rec = convert_row({"instruction": "Add", "input": "1+1", "output": "2"}, "auto", "a.json: item 1")
    rec.messages, rec.format, rec.id           # [{"role": "user", …}, …], "alpaca", "alpaca-…"

Row formats (``fmt="auto"`` decides per row; :data:`FORMATS` are the names to force one):

* ``messages`` — ``{"messages": [{"role", "content"}, …]}``, optionally with the builders' ``id``,
  ``task``, ``lang``, ``meta`` (``longqa/data/schema.py``); or ``{"text": …}`` for pretraining.
* ``openai`` — OpenAI fine-tuning rows: ``messages`` plus OpenAI fields (``name``, ``weight``,
  ``tools``…); ``developer`` counts as ``system``; ``"weight": 0`` marks an assistant turn untrained.
* ``sharegpt`` — ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}``.
* ``alpaca`` — ``{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], …]}``.
* ``text`` — ``{"text": …}`` (a document, trained on every token).

A row without ``id`` gets one from a hash of its content. Anything else raises :class:`BadRow`: one
line naming where (``file:line``), the field and what was expected, plus a short ``reason`` code that
``build-data --task mix`` counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from longqa.core.errors import LongqaError

FORMATS = ("messages", "openai", "sharegpt", "alpaca", "text")

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
}
_SAMPLE_KEYS = {"id", "task", "lang", "messages", "text", "meta"}


class BadRow(LongqaError):
    """A row that cannot be used: ``str(err)`` is ``"<where>: field '<f>': <why>"``."""

    def __init__(self, where: str, fld: str | None, why: str, reason: str) -> None:
        self.where, self.field, self.reason = where, fld, reason
        super().__init__(f"{where}: " + (f"field '{fld}': " if fld else "") + why)


@dataclass
class Record:
    """One converted row: a conversation (``messages``) or a document (``text``)."""

    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    source: str = ""  # file:line (or file: item N) of the row
    id: str = ""
    format: str = ""
    task: str | None = None  # the builders' task name, when the row carries one
    lang: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def detect_row_format(row: dict[str, Any]) -> str | None:
    """The format a row is written in, or None when it matches none."""
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row:
        return "alpaca"
    if "messages" in row:
        turns = row["messages"] if isinstance(row["messages"], list) else []
        extra = set(row) - _SAMPLE_KEYS or any(
            isinstance(m, dict) and (set(m) - {"role", "content"} or m.get("role") == "developer")
            for m in turns
        )
        return "openai" if extra else "messages"
    if "text" in row:
        return "text"
    return None


def content_id(fmt: str, payload: Any) -> str:
    """A stable id for a row that has none: the format and a hash of its content."""
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
    return f"{fmt}-{digest.hexdigest()[:12]}"


def convert_row(row: Any, fmt: str = "auto", where: str = "") -> Record:
    """Convert one row (see the module docstring); raises :class:`BadRow`."""
    if not isinstance(row, dict):
        raise BadRow(where, None, f"expected a JSON object, got {type(row).__name__}", "bad_line")
    kind = detect_row_format(row) if fmt == "auto" else fmt
    if kind is None:
        raise BadRow(
            where,
            None,
            "unrecognised sample (expected 'messages', 'text', 'conversations' or "
            "'instruction'+'output')",
            "unknown_format",
        )
    if kind not in FORMATS:
        raise LongqaError(f"unknown data format '{kind}'; known: auto, {', '.join(FORMATS)}")
    if kind == "text" or (kind == "messages" and "messages" not in row and "text" in row):
        return _text(row, where)  # a builder's pretraining row is also a valid "messages" row
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
    return _record(row, kind, where, messages=messages)


def _main_field(kind: str) -> str:
    return {"sharegpt": "conversations", "alpaca": "output"}.get(kind, "messages")


def _text(row: dict[str, Any], where: str) -> Record:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRow(where, "text", "expected a non-empty string", "bad_text")
    return _record(row, "text", where, text=text)


def _record(row: dict[str, Any], kind: str, where: str, **content: Any) -> Record:
    """A :class:`Record` of ``content`` (messages or text) with the row's id/task/lang/meta."""
    rid, task, lang, meta = (row.get(k) for k in ("id", "task", "lang", "meta"))
    return Record(
        **content,
        source=where,
        id=str(rid) if rid not in (None, "") else content_id(kind, next(iter(content.values()))),
        format=kind,
        task=task if isinstance(task, str) else None,
        lang=lang if isinstance(lang, str) else None,
        meta=meta if isinstance(meta, dict) else {},
    )


def _turn(role: Any, content: Any, where: str, path: str, role_key: str) -> dict[str, str]:
    mapped = ROLES.get(str(role).lower()) if isinstance(role, str) else None
    if mapped is None:
        known = "system, user, assistant (or human, gpt)"
        raise BadRow(where, f"{path}.{role_key}", f"unknown role {role!r}; expected {known}", (
            "unknown_role"
        ))  # fmt: skip
    if not isinstance(content, str):
        raise BadRow(where, path, "expected a string content", "bad_turn")
    return {"role": mapped, "content": content}


def _from_messages(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    turns = row.get("messages")
    if not isinstance(turns, list):
        raise BadRow(where, "messages", "expected a list of {role, content}", "bad_messages")
    out = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict):
            raise BadRow(where, f"messages.{i}", "expected {role, content}", "bad_messages")
        msg: dict[str, Any] = _turn(m.get("role"), m.get("content"), where, f"messages.{i}", "role")
        if m.get("weight") in (0, 0.0) and msg["role"] == "assistant":
            msg["weight"] = 0
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
        out.append(_turn(t.get(role_key), content, where, f"conversations.{i}", role_key))
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
