"""OpenAI tool calling as users fine-tune it: rows with ``tool_calls``, ``tool`` turns, ``tools``,
``content: null`` and content parts are read, rendered (the template's own tool convention, else the
documented Hermes convention) and trained on the assistant turns only; impossible rows are refused
in one line naming the row."""

from __future__ import annotations

import json

import pytest
from train_fixtures import byte_tokenizer, write_jsonl

from longqa.core.errors import LongqaError
from longqa.data.conversation import IGNORE_INDEX
from longqa.data.formats import convert_row
from longqa.data.sources import load_dataset_records
from longqa.data.tool_calls import template_renders_tools
from longqa.train.data import tokenize_sft

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
# one row as OpenAI's fine-tuning guide writes it (chat format with function calling)
OPENAI_ROW = {
    "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in "},
                {"type": "text", "text": "Paris?"},
            ],
        },  # fmt: skip
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": "It is 21 C in Paris."},
    ],
    "tools": TOOLS,
    "parallel_tool_calls": False,
}
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

# a template with its own tool convention (shaped like Qwen2.5's: tools in the system turn, calls
# after the assistant text, results in a user turn)
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}"
    "{{ messages[0].content }}\n{% endif %}TOOLS:{% for t in tools %}{{ t.function.name }};"
    "{% endfor %}<|im_end|>\n{% elif messages[0].role == 'system' %}<|im_start|>system\n"
    "{{ messages[0].content }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}{% if m.role == 'system' %}"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[CALL {{ c.function.name }} "
    "{{ c.function.arguments | tojson }}]{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n[RESULT {{ m.content }}]<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _trained_text(tok, example) -> str:
    return tok.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_openai_tool_rows_render_in_the_hermes_convention_and_train_assistant_turns_only(
    tmp_path,
):
    path = write_jsonl(tmp_path / "ft.jsonl", [OPENAI_ROW, OPENAI_ROW])
    loaded = load_dataset_records(path)
    assert [r.format for r in loaded.records] == ["openai", "openai"]
    rec = loaded.records[0]
    assert rec.tools == TOOLS and rec.messages[1]["content"] == "Weather in Paris?"
    assert rec.messages[2]["content"] == "" and rec.messages[3]["role"] == "tool"
    tok = byte_tokenizer()  # plain ChatML: no tool support of its own
    assert not template_renders_tools(tok)
    examples, stats = tokenize_sft(loaded.records, tok, max_length=4096)
    text = tok.decode(examples[0].input_ids)
    assert text.startswith("<|im_start|>system\nYou are a weather bot.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in text
    assert f"<|im_start|>assistant\n{HERMES_CALL}<|im_end|>" in text
    assert '<|im_start|>tool\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>' in text
    # loss: the call and the answer (each with its end-of-turn), never the tool result or prompt
    want = f"{HERMES_CALL}<|im_end|>\nIt is 21 C in Paris.<|im_end|>\n"
    assert _trained_text(tok, examples[0]) == want
    assert stats.label_tokens == 2 * len(tok(want, add_special_tokens=False)["input_ids"])


def test_a_template_that_renders_tools_gets_them_natively():
    tok = byte_tokenizer(TOOL_TEMPLATE)
    assert template_renders_tools(tok)
    rec = convert_row(OPENAI_ROW, "auto", "ft.jsonl:1")
    (ex,), _ = tokenize_sft([rec], tok, max_length=4096)
    text = tok.decode(ex.input_ids)
    assert "TOOLS:get_weather;" in text and '[RESULT {"temp_c": 21}]' in text
    assert "<tool_call>" not in text
    want = '[CALL get_weather {"city": "Paris"}]<|im_end|>\nIt is 21 C in Paris.<|im_end|>\n'
    assert _trained_text(tok, ex) == want


def test_legacy_function_call_and_functions_and_weight_zero():
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "weight": 0,
             "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"role": "function", "name": "get_weather", "content": "21"},
            {"role": "assistant", "content": "21 C."},
        ],
        "functions": [TOOLS[0]["function"]],
    }  # fmt: skip
    rec = convert_row(row, "auto", "f:1")
    assert rec.tools == TOOLS and rec.messages[2]["role"] == "tool"
    tok = byte_tokenizer()
    (ex,), _ = tokenize_sft([rec], tok, max_length=4096)
    assert HERMES_CALL in tok.decode(ex.input_ids)
    assert _trained_text(tok, ex) == "21 C.<|im_end|>\n"  # the weight-0 call is context


BAD = [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
     r"f\.jsonl:1: field 'messages\.0\.content\.0': a 'image_url' part; only text parts"),
    ({"role": "assistant", "content": None},
     r"f\.jsonl:1: field 'messages\.0\.content': expected a string content \(null only"),
    ({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": "{oops"}}]},
     r"field 'messages\.0\.tool_calls\.0\.function\.arguments': not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize("turn,expected", BAD)
def test_impossible_rows_are_refused_in_one_line_naming_the_row(turn, expected):
    row = {"messages": [turn, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(LongqaError, match=expected) as err:
        convert_row(row, "auto", "f.jsonl:1")
    assert "\n" not in str(err.value)


def test_a_template_that_cannot_render_tool_turns_refuses_the_row_or_skips_it():
    strict = (
        "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('roles must be user or assistant') }}{% endif %}"
        "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = byte_tokenizer(strict)
    plain = convert_row({"messages": OPENAI_ROW["messages"][:2] + OPENAI_ROW["messages"][4:]})
    tool_row = convert_row(OPENAI_ROW, "auto", "ft.jsonl:7")
    with pytest.raises(
        LongqaError,
        match=r"^ft\.jsonl:7: field 'messages': the chat template "
        r"cannot render this conversation \(roles must be user or assistant\)$",
    ):
        tokenize_sft([plain, tool_row], tok, max_length=4096)
    examples, stats = tokenize_sft([plain, tool_row], tok, max_length=4096, skip_bad_rows=True)
    assert len(examples) == 1 and stats.skipped_rows == {"template": 1}
    assert stats.skips[0].startswith("ft.jsonl:7: ")


def test_llama_factory_sharegpt_tool_turns_render_like_the_openai_row():
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp_c": 21}'},
            {"from": "gpt", "value": "It is 21 C in Paris."},
        ],
        "system": "You are a weather bot.",
        "tools": json.dumps([TOOLS[0]["function"]]),
    }  # fmt: skip
    rec = convert_row(row, "auto", "lf.json: item 1")
    assert rec.format == "sharegpt" and rec.tools == TOOLS
    tok = byte_tokenizer()
    (ex,), _ = tokenize_sft([rec], tok, max_length=4096)
    (want,), _ = tokenize_sft([convert_row(OPENAI_ROW)], tok, max_length=4096)
    assert ex.input_ids == want.input_ids and ex.labels == want.labels
    bad = {
        **row,
        "conversations": [row["conversations"][0], {"from": "function_call", "value": "x("}],
    }
    with pytest.raises(LongqaError, match=r"item 1: field 'conversations\.1\.value': not a JSON"):
        convert_row(bad, "auto", "lf.json: item 1")
