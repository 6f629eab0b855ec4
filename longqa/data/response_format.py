"""Structured-output dialects of OpenAI-compatible servers: the ``response_format`` request field.

Usage (the LLM client does this; see :mod:`longqa.data.llm`)::

    schema = object_schema(("question", "original_text", "answer"), name="qa")
    response_format_payload("json_schema", schema)   # OpenAI, vLLM, llama-server
    response_format_payload("json_object", schema)   # llama-cpp-python: {"type": "json_object", "schema": …}
    names_response_format(exc)                        # is this HTTP error a refused format?
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from longqa.core.errors import LongqaError

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
AUTO_ORDER = ("json_schema", "json_object", "none")


def object_schema(keys: Sequence[str], name: str = "answer") -> dict[str, Any]:
    """JSON schema of an object with the non-empty string fields ``keys`` (all required, no others);
    ``title`` names it in the ``json_schema`` dialect."""
    return {
        "title": name,
        "type": "object",
        "properties": {k: {"type": "string", "minLength": 1} for k in keys},
        "required": list(keys),
        "additionalProperties": False,
    }


def response_format_payload(dialect: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``response_format`` request field of ``dialect`` (None for ``none``)."""
    if dialect == "none":
        return None
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
    if dialect == "json_schema":
        if not schema:  # no schema to send: OpenAI's schema-less JSON mode
            return {"type": "json_object"}
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "answer"))[:64]
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
    raise LongqaError(f"--response-format {dialect}: expected one of {', '.join(RESPONSE_FORMATS)}")


def names_response_format(exc: Exception) -> bool:
    """Whether a 400/422 is about ``response_format`` (not, say, a prompt that is too long)."""
    body = getattr(exc, "body", None)
    text = json.dumps(body) if body is not None else ""
    return "response_format" in f"{exc} {text}"
