"""OpenAI tool calling in fine-tuning rows: reading the fields, and rendering them for a chat template.

Usage::

    from longqa.data.tool_calls import template_messages
    msgs, kwargs = template_messages(tokenizer, record.messages, record.tools)
    text = tokenizer.apply_chat_template(msgs, tokenize=False, **kwargs)

Reading (:func:`text_content`, :func:`parse_tool_calls`, :func:`calls_from_text`,
:func:`parse_tools`; used by :mod:`longqa.data.formats`): content as a string, ``null``, or a list
of ``{"type": "text", "text"}`` parts (joined); an assistant turn's ``tool_calls`` (``arguments`` a
JSON object, as a string or already parsed), the older ``function_call``, or a call written as JSON
text (LLaMA-Factory's ShareGPT ``function_call`` turn); the row's ``tools`` (or older
``functions``) list, also accepted as a JSON string.

Rendering (:func:`template_messages`): a tokenizer whose chat template renders tool calls, tool
results and tool definitions (checked once per template by rendering a probe conversation) gets
them as transformers' chat-template convention has them (``tool_calls`` on the message,
``tools=…``). Any other template — SmolLM2's plain ChatML among them — gets the Hermes / Qwen2.5
convention written into ordinary turns, so the row still trains with assistant-only loss:

* the tools list goes into the system turn (after its text; a system turn is added when there is
  none) as Qwen2.5's template writes it: one JSON definition per line inside ``<tools></tools>``
  and the instruction to answer calls as ``<tool_call>{"name", "arguments"}</tool_call>``;
* an assistant turn's calls follow its text, each as ``<tool_call>\\n{"name": …, "arguments":
  {…}}\\n</tool_call>`` (the assistant turn, calls included, is trained);
* a tool result is its own ``tool`` turn, ``<tool_response>\\n…\\n</tool_response>`` (context only).
"""

from __future__ import annotations

import json
from typing import Any

from longqa.data.bad_rows import BadRow

TEXT_PART_TYPES = ("text", "input_text", "output_text")
TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


# ---------------------------------------------------------------- reading rows


def text_content(content: Any, where: str, path: str) -> str | None:
    """A turn's content as text: a string, ``None`` as given, or its text parts joined."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRow(where, f"{path}.content", "expected a string or a list of text parts", (
            "bad_turn"
        ))  # fmt: skip
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type", "text") if isinstance(part, dict) else type(part).__name__
        if kind not in TEXT_PART_TYPES or not isinstance(part.get("text"), str):
            raise BadRow(
                where,
                f"{path}.content.{j}",
                f"a '{kind}' part; only text parts ({{'type': 'text', 'text': …}}) can be trained",
                "non_text_part",
            )
        texts.append(part["text"])
    return "".join(texts)


def _arguments(value: Any, where: str, path: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise BadRow(where, path, f"not valid JSON ({exc.msg})", "bad_tool_call") from None
    if not isinstance(value, dict):
        raise BadRow(where, path, "expected a JSON object (as a string)", "bad_tool_call")
    return value


def _call(raw: Any, where: str, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRow(where, path, "expected {id, type, function: {name, arguments}}", (
            "bad_tool_call"
        ))  # fmt: skip
    fn = raw.get("function", raw)  # a bare {name, arguments} is accepted too
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise BadRow(where, f"{path}.function.name", "expected the function's name", (
            "bad_tool_call"
        ))  # fmt: skip
    call = {
        "type": "function",
        "function": {
            "name": fn["name"],
            "arguments": _arguments(fn.get("arguments"), where, f"{path}.function.arguments"),
        },
    }
    if isinstance(raw.get("id"), str):
        call["id"] = raw["id"]
    return call


def parse_tool_calls(turn: dict[str, Any], where: str, path: str) -> list[dict[str, Any]]:
    """An assistant turn's ``tool_calls`` (or older ``function_call``), normalised."""
    calls = turn.get("tool_calls")
    if calls is None and turn.get("function_call") is not None:
        return [_call(turn["function_call"], where, f"{path}.function_call")]
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise BadRow(where, f"{path}.tool_calls", "expected a list of calls", "bad_tool_call")
    return [_call(c, where, f"{path}.tool_calls.{k}") for k, c in enumerate(calls)]


def calls_from_text(text: Any, where: str, path: str) -> list[dict[str, Any]]:
    """Calls written as JSON text (``{"name", "arguments"}`` or a list of them), normalised."""
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise BadRow(where, path, f"not a JSON tool call ({exc.msg})", "bad_tool_call") from None
    calls = value if isinstance(value, list) else [value]
    return [_call(c, where, f"{path}.{k}" if len(calls) > 1 else path) for k, c in enumerate(calls)]


def parse_tools(row: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """The row's tool definitions as ``[{"type": "function", "function": {name, …}}]``."""
    key = "tools" if row.get("tools") is not None else "functions"
    tools = row.get(key)
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise BadRow(where, key, f"not valid JSON ({exc.msg})", "bad_tools") from None
    if not isinstance(tools, list):
        raise BadRow(where, key, "expected a list of tool definitions", "bad_tools")
    out = []
    for k, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRow(where, f"{key}.{k}", "expected {type: function, function: {name, …}}", (
                "bad_tools"
            ))  # fmt: skip
        out.append({"type": "function", "function": fn})
    return out or None


# ---------------------------------------------------------------- rendering

_PROBE_NAMES = ("longqa_probe_call", "longqa_probe_result", "longqa_probe_tool")
_SUPPORTS: dict[str, bool] = {}


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes tool calls, tool results and tool
    definitions (a probe conversation rendered once per template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    if template not in _SUPPORTS:
        call = {"type": "function", "id": "call_0",
                "function": {"name": _PROBE_NAMES[0], "arguments": {"x": 1}}}  # fmt: skip
        probe = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": _PROBE_NAMES[1], "tool_call_id": "call_0"},
            {"role": "assistant", "content": "done"},
        ]
        tools = [{"type": "function", "function": {"name": _PROBE_NAMES[2], "description": "d",
                  "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip
        try:
            text = tokenizer.apply_chat_template(probe, tools=tools, tokenize=False)
        except Exception:  # a template that raises on tool turns does not support them
            text = ""
        _SUPPORTS[template] = isinstance(text, str) and all(n in text for n in _PROBE_NAMES)
    return _SUPPORTS[template]


def uses_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def template_messages(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages (and ``apply_chat_template`` keywords) for the tokenizer's chat template: roles and
    contents only without tools; tool fields where the template renders them; else the Hermes
    convention (see the module docstring). Assistant turns keep their order."""
    if not uses_tools(messages, tools):
        return [{"role": m["role"], "content": m["content"]} for m in messages], {}
    if template_renders_tools(tokenizer):
        out = []
        for m in messages:
            msg = {"role": m["role"], "content": m["content"]}
            msg.update({k: m[k] for k in ("tool_calls", "tool_call_id", "name") if k in m})
            out.append(msg)
        return out, ({"tools": tools} if tools else {})
    return hermes_messages(messages, tools), {}


def _tool_call_text(call: dict[str, Any]) -> str:
    fn = call["function"]
    body = json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def hermes_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, str]]:
    """Tool calls, results and definitions written into plain turns (Hermes / Qwen2.5 style)."""
    out: list[dict[str, str]] = []
    for m in messages:
        content = m["content"]
        if m.get("tool_calls"):
            content = "\n".join([*([content] if content else []),
                                 *map(_tool_call_text, m["tool_calls"])])  # fmt: skip
        elif m["role"] == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": m["role"], "content": content})
    if tools:
        defs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        block = f"{TOOLS_HEADER}\n{defs}\n{TOOLS_FOOTER}"
        if out and out[0]["role"] == "system":
            text = out[0]["content"].strip()
            out[0] = {"role": "system", "content": f"{text}\n\n{block}" if text else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
