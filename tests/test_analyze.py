"""Effective-token and attention-shape analysis: constructed cases with known answers."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_llama_config
from transformers import LlamaForCausalLM

from longqa.analyze.attention import attention_profile, bin_context_attention
from longqa.analyze.effective import ablate, effective_tokens
from longqa.analyze.runner import attention_inputs, relevant_targets
from longqa.core.errors import LongqaError
from longqa.data.schema import Sample, read_samples

DOC = (
    "Document 7:\nThe warehouse inventory codes are: plover 4821, marten 9034, quetzal 1177, "
    "bittern 5562, and the night shift key is cobalt 3309."
)
FILLER = (
    "Document 1:\nThe town council met on Tuesday to discuss the new park.\n\n"
    "Document 2:\nRainfall was above average this spring in the valley.\n\n"
)


def _tiny(attn: str = "eager") -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = tiny_llama_config(attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


def test_bin_context_attention_exact_values():
    # 1 query over 4 context keys + 2 answer keys; 2 bins → keys {0,1} and {2,3}
    w = torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.1, 0.1]])
    out = bin_context_attention(w, context_end=4, bins=2)
    assert torch.allclose(out, torch.tensor([[0.3 / 0.8, 0.5 / 0.8]]))


def test_attention_profile_sums_to_one_and_marks_span():
    model = _tiny()
    ids = torch.randint(0, 128, (1, 130))
    prof = attention_profile(model, ids, [120, 125, 129], context_end=100, bins=10, span=(30, 50))
    assert prof.per_token.shape == (3, 10) and prof.per_layer.shape == (2, 10)
    assert torch.allclose(prof.per_token.sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(prof.per_layer.sum(-1), torch.ones(2), atol=1e-5)
    assert prof.span == (0.3, 0.5)
    assert prof.span_bins() == (3, 4)
    s = prof.summary()
    assert abs(s["start_mass"] + s["middle_mass"] + s["end_mass"] - 1) < 1e-5


def test_attention_profile_matches_output_attentions():
    model = _tiny()
    ids = torch.randint(0, 128, (1, 60))
    prof = attention_profile(model, ids, [55, 59], context_end=50, bins=5)
    with torch.no_grad():
        att = model(ids, output_attentions=True).attentions  # per layer [1, H, T, T]
    ref = []
    for layer in att:
        rows = layer[0, :, [55, 59], :50]
        rows = rows / rows.sum(-1, keepdim=True)
        ref.append(rows.reshape(*rows.shape[:2], 5, 10).sum(-1).mean(0).mean(0))
    assert torch.allclose(prof.per_layer, torch.stack(ref), atol=1e-5)


def test_attention_profile_rejects_non_eager_and_bad_positions():
    model = _tiny(attn="sdpa")
    ids = torch.randint(0, 128, (1, 60))
    with pytest.raises(ValueError, match="eager"):
        attention_profile(model, ids, [55], context_end=50, bins=5)
    with pytest.raises(ValueError, match="after the context"):
        attention_profile(_tiny(), ids, [10], context_end=50, bins=5)


def test_ablate_remove_and_distractor():
    msgs = [
        {"role": "user", "content": FILLER + DOC + "\n\nWhat is the key?"},
        {"role": "assistant", "content": "cobalt 3309"},
    ]
    removed = ablate(msgs, [DOC])
    assert DOC not in removed[0]["content"] and "Document 1" in removed[0]["content"]
    assert removed[1] == msgs[1]
    repl = ablate(msgs, [DOC], mode="distractor", distractors=["lorem ipsum dolor " * 3])
    assert len(repl[0]["content"]) == len(msgs[0]["content"]) and DOC not in repl[0]["content"]
    with pytest.raises(ValueError, match="not found verbatim"):
        ablate(msgs, ["absent text"])


def _sample(messages, relevant) -> Sample:
    return Sample(id="s1", task="paraphrase-mdqa", messages=messages, meta={"relevant": relevant})


def test_relevant_targets_and_attention_inputs(smollm2):
    _, tok = smollm2
    user = FILLER + DOC + "\n\nWhat are the codes?"
    start = user.index(DOC)
    msgs = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": 'The original text is: "plover 4821"'},
    ]
    s = _sample(msgs, [{"doc_span": [start, start + len(DOC)], "quote": "plover 4821"}])
    docs, quotes = relevant_targets(s)
    assert docs == [DOC] and quotes == ["plover 4821"]
    ids, answer, ctx_end, span = attention_inputs(tok, s)
    assert answer[0] == ctx_end and span is not None and span[0] < span[1] <= ctx_end
    assert "Document 7" in tok.decode(ids[0, span[0] : span[1]])
    assert "plover" in tok.decode(ids[0, answer])
    with pytest.raises(LongqaError, match="meta.relevant"):
        relevant_targets(Sample(id="x", task="t", messages=msgs, meta={}))


@pytest.mark.model
def test_effective_share_copy_vs_common_knowledge(smollm2):
    """The answer copied from the removed document is effective; common knowledge is not."""
    model, tok = smollm2
    q = "\n\nWhat does document 7 say?"
    copy = (
        "The warehouse inventory codes are: plover 4821, marten 9034, quetzal 1177, bittern 5562, "
        "and the night shift key is cobalt 3309."
    )
    known = "The capital of France is Paris, and water boils at one hundred degrees Celsius."
    results = {}
    for name, ans in (("copy", copy), ("known", known)):
        msgs = [
            {"role": "user", "content": FILLER + DOC + q},
            {"role": "assistant", "content": ans},
        ]
        quotes = [ans] if name == "copy" else [None]
        results[name] = effective_tokens(model, tok, msgs, ablate(msgs, [DOC]), quotes=quotes)
    assert results["copy"].share > 0.5
    assert results["known"].share < 0.1
    assert results["copy"].quote_share is not None and results["copy"].quote_share > 0.5
    assert results["known"].quote_share is None
    summary = results["copy"].to_json()
    # every assistant token is quote text except the template's end-of-turn marker
    assert summary["quote_tokens"] > 10
    assert summary["tokens"] - summary["quote_tokens"] <= 3
    json.dumps(summary)


def _build(corpus, out, style):
    from data_builders.paraphrase_mdqa import Options, build

    build(
        Options(
            corpus=str(corpus),
            out=str(out),
            generator="extractive",
            tokenizer="approx",
            num_samples=3,
            target_tokens=2048,
            turns=3,
            negative_ratio=0.0,
            answer_style=style,
            progress=False,
        )
    )
    return sorted(read_samples(out), key=lambda s: s.id)


def test_builder_meta_locates_documents_and_quotes(essays_dir, tmp_path):
    """meta.relevant gives each relevant document's span in the prompt and the verbatim quote;
    the plain control set has the same documents and questions but no quotes in its answers."""
    para = _build(essays_dir, tmp_path / "para", "paraphrase")
    plain = _build(essays_dir, tmp_path / "plain", "plain")
    assert len(para) == len(plain) == 3
    for a, b in zip(para, plain, strict=True):
        docs, quotes = relevant_targets(a)
        answers = [m.content for m in a.messages if m.role == "assistant"]
        assert len(quotes) == len(answers) and all(
            q and q in ans for q, ans in zip(quotes, answers, strict=True)
        )
        first_user = next(m.content for m in a.messages if m.role == "user")
        for e, doc in zip(a.meta["relevant"], docs, strict=True):
            assert first_user[e["doc_span"][0] : e["doc_span"][1]] == doc
            assert f"Document {e['doc_index']}:\n{doc}" in first_user
        plain_docs, plain_quotes = relevant_targets(b)
        assert plain_docs == docs and plain_quotes == [None] * len(answers)
        plain_answers = [m.content for m in b.messages if m.role == "assistant"]
        assert all(q not in ans for q, ans in zip(quotes, plain_answers, strict=True))
