"""`longqa eval harness`: lm-eval on the model as longqa loads it (extra `harness`), offline.

Fidelity: with a static RoPE spec (YaRN x2 on SmolLM2-135M) the harness run and lm-eval's own `hf`
model on the `longqa export --merge` output give the same per-sample log-likelihoods on a local
multiple-choice task; with a dynamic method the harness run differs from that static export and
equals longqa's patched forward on the tokens lm-eval scores. The default suite runs it in-process on
a few short samples; the `integration` test runs both command lines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.eval import lm_eval_tasks

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-eval not installed (extra: pip install -e '.[harness]')",
)
TASK = "longqa_tiny_mc"
WORDS = "river garden window silver market candle bridge meadow lantern harbor".split()
STORY = "The old {0} stood by the {1} on the road to the {2}. "
STATIC = {"method": "yarn", "factor": 2.0}
# dynamic YaRN scaled from a 16-token window: every (short) sample gets its own scale
DYNAMIC = RopeConfig(method="dynamic-yarn", original_max_position_embeddings=16, margin=0)


def write_task(folder: Path, n_docs: int = 3) -> Path:
    """A local multiple-choice lm-eval task (JSONL + YAML); contexts of different lengths."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_docs):
        a, b, c = WORDS[i % 10], WORDS[(i + 3) % 10], WORDS[(i + 6) % 10]
        text = STORY.format(a, b, c) * (1 + i)
        choices = [WORDS[(i + k) % 10] for k in (0, 1, 4)]
        rows.append({"passage": text, "choices": choices, "gold": 0})
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{passage}}\\nWhat stood by the road?\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return folder


def loglikelihoods(rows: list[dict]) -> dict[tuple[int, int], float]:
    """(doc_id, choice) -> log-likelihood from lm-eval sample rows (its CLI writes strings)."""
    return {
        (int(r["doc_id"]), k): float(resp[0])
        for r in rows
        for k, resp in enumerate(r["filtered_resps"])
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def patched_forward(model, tok, rows: list[dict]) -> dict[tuple[int, int], float]:
    """Log-likelihood of each continuation by longqa's patched model alone (one unpadded forward
    per request, on the tokens lm-eval's causal scoring feeds: context + continuation[:-1])."""
    out, cache = {}, {}
    for r in rows:
        for k, (context, continuation) in enumerate(r["arguments"]):
            spaces = len(context) - len(context.rstrip())  # lm-eval moves them to the continuation
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = tok.encode(context + continuation)
            cont, inp = whole[len(tok.encode(context)) :], tuple(whole[:-1])
            if inp not in cache:  # choices of one token share their input: one forward
                with torch.no_grad():
                    cache[inp] = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), -1)
            picked = cache[inp][-len(cont) :].gather(-1, torch.tensor(cont)[:, None])
            out[(int(r["doc_id"]), k)] = float(picked.sum())
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(abs(a[k] - b[k]) for k in a)


# ----------------------------------------------------------------------------- no lm-eval needed
def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(LongqaError, match=r"pip install 'longqa\[harness\]'"):
        lm_eval_tasks.require_lm_eval()


def test_headline_takes_the_tasks_first_metric():
    from longqa.eval.harness import headline

    row = {"alias": "t", "sample_len": 4, "acc,none": 0.5, "acc_stderr,none": 0.25, "f1,none": 0.1}
    assert headline(row, ["acc", "f1"]) == ("acc", 0.5, 0.25)
    assert headline({"score,strict": 0.3}, ["score"]) == ("score,strict", 0.3, None)
    assert headline(row, ["bleu"]) == ("", None, None)


def test_summary_is_read_by_compare(tmp_path):
    from longqa.eval.compare import compare_runs
    from longqa.eval.harness import _summary
    from longqa.eval.results import SUMMARY_FILE

    for name, acc in (("a", 0.25), ("b", 0.75)):
        rows = [{"key": TASK, "metric": "acc", "value": acc, "stderr": 0.1, "n": 4}]
        s = _summary(rows, [TASK], RopeConfig(method="yarn", factor=2.0), 16384, "m")
        (tmp_path / name).mkdir()
        (tmp_path / name / SUMMARY_FILE).write_text(json.dumps(s))
    assert s["window"] == 16384 and s["rope_spec"]["factor"] == 2.0 and s["acc"] == 0.75
    info, rows = compare_runs(tmp_path / "a", tmp_path / "b")
    assert info["tasks"] == ("harness", "harness") and info["ropes"][1] == "yarn(factor=2.0)"
    assert ("acc", 0.25, 0.75, 0.5) in rows and ("task longqa_tiny_mc acc", 0.25, 0.75, 0.5) in rows


def test_offline_sets_and_restores_the_flags(monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = hub.HF_HUB_OFFLINE
    with lm_eval_tasks.offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert hub.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and hub.HF_HUB_OFFLINE == before


def test_quantization_follows_the_adapters_recipe(tmp_path):
    from longqa.eval.harness import trained_quantization

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "longqa.json").write_text(json.dumps({"base_model": "smollm2-135m"}))
    (tmp_path / "recipe.yaml").write_text("model:\n  name: smollm2-135m\n  quantization: nf4\n")
    assert trained_quantization(tmp_path) == "nf4"
    assert trained_quantization(tmp_path, "none") == "none"
    assert trained_quantization(None) == "none"
    with pytest.raises(LongqaError, match="--quantization must be auto, none or nf4"):
        trained_quantization(None, "int8")


# ------------------------------------------------------------------------------- lm-eval needed
@needs_lm_eval
def test_hub_dataset_and_missing_file_fail_in_one_line(tmp_path):
    (tmp_path / "hub.yaml").write_text(
        "task: needs_hub\ndataset_path: someorg/not-cached-here\ndataset_name: sub\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: x\n"
        'doc_to_choice: "{{c}}"\ndoc_to_target: 0\n'
    )
    with pytest.raises(LongqaError) as err:
        lm_eval_tasks.prepare_tasks(["needs_hub"], [tmp_path])
    msg = str(err.value)
    assert "\n" not in msg and "someorg/not-cached-here (sub)" in msg and "data_files" in msg
    write_task(tmp_path / "t")
    (tmp_path / "t" / "tiny_mc.jsonl").unlink()
    with pytest.raises(LongqaError, match=r"task 'longqa_tiny_mc': data file not found: .*tiny_mc"):
        lm_eval_tasks.prepare_tasks([TASK], [tmp_path / "t"])


@needs_lm_eval
def test_shipped_task_yamls_load_on_built_data(tmp_path, monkeypatch, essays_dir):
    from data_builders import longbench_pr, paraphrase_mdqa

    monkeypatch.chdir(tmp_path)  # the shipped YAMLs read harness_data/ under the working dir
    longbench_pr.build(
        longbench_pr.Options(corpus=essays_dir, out=Path("harness_data"), num_samples=2,
                             num_paragraphs=4, max_words=60)
    )  # fmt: skip
    paraphrase_mdqa.build(
        paraphrase_mdqa.Options(corpus=str(essays_dir), out="harness_data/mdqa",
                                generator="extractive", num_samples=2, target_tokens=400,
                                tokenizer="approx", docs_per_group=6, max_doc_tokens=100,
                                turns=1, negative_ratio=0.0, neutral_questions=True,
                                progress=False)
    )  # fmt: skip
    names = sorted(p.stem for p in lm_eval_tasks.HARNESS_TASKS.glob("*.yaml"))
    assert names == [
        "longqa_mdqa_choice", "longqa_passage_retrieval_en", "longqa_passage_retrieval_en_choice"
    ]  # fmt: skip
    tm = lm_eval_tasks.prepare_tasks(names, [lm_eval_tasks.HARNESS_TASKS])
    with lm_eval_tasks.offline():
        tasks = tm.load(names)["tasks"]
    choice = tasks["longqa_passage_retrieval_en_choice"]
    doc = list(choice.test_docs())[0]
    assert choice.doc_to_choice(doc) == [f"Paragraph {i}" for i in range(1, 5)]
    assert choice.doc_to_choice(doc)[choice.doc_to_target(doc)] == doc["answers"][0]
    gen = tasks["longqa_passage_retrieval_en"]
    assert gen.doc_to_text(doc).startswith("Here are 4 paragraphs from Wikipedia")
    assert gen.process_results(doc, [doc["answers"][0]]) == {"score": 1.0, "exact": 1.0}
    mdqa = tasks["longqa_mdqa_choice"]
    doc = list(mdqa.test_docs())[0]
    rel = doc["meta"]["relevant"][0]
    assert mdqa.doc_to_choice(doc) == rel["choices"] and len(rel["choices"]) == 4
    assert mdqa.doc_to_choice(doc)[mdqa.doc_to_target(doc)] == rel["answer"]
    assert mdqa.doc_to_text(doc).endswith("Which one?\n\nAnswer:")


@pytest.fixture(scope="module")
def yarn_adapter(tmp_path_factory, smollm2_path):
    """A LoRA adapter on SmolLM2-135M trained (here: random, nonzero) with static YaRN x2, and its
    `longqa export --merge` output in float32."""
    from longqa.config.recipe import ModelConfig, Recipe, TrainConfig
    from longqa.models.adapters import save_adapter_bundle
    from longqa.models.export_hf import export_adapter
    from longqa.models.load import load
    from longqa.testing.tiny import with_lora

    tmp = tmp_path_factory.mktemp("harness")
    model, tok, _ = load("smollm2-135m", dtype="float32")
    torch.manual_seed(0)
    peft_model = with_lora(
        model, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0
    )
    recipe = Recipe(
        name="harness-fidelity",
        model=ModelConfig(name="smollm2-135m", dtype="float32", quantization="none"),
        rope=RopeConfig(**STATIC),
        train=TrainConfig(max_length=1024),
    )
    adapter = save_adapter_bundle(peft_model, tok, recipe, tmp / "adapter")
    merged = Path(export_adapter(adapter, tmp / "merged", merge=True, dtype="float32")["out"])
    return adapter, merged


def _hf_on_export(merged: Path, task_dir: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    with lm_eval_tasks.offline(), lm_eval_tasks.quiet_lm_eval():
        out = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": str(merged), "dtype": "float32"}, tasks=[TASK],
            task_manager=tm, batch_size=2, device="cpu", log_samples=True,
        )  # fmt: skip
    return loglikelihoods(out["samples"][TASK])


@needs_lm_eval
@pytest.mark.model
def test_harness_equals_lm_eval_on_the_export_and_dynamic_equals_the_patched_forward(
    tmp_path, yarn_adapter
):
    from longqa.eval.harness import run_harness
    from longqa.models.load import load

    adapter, merged = yarn_adapter
    task_dir = write_task(tmp_path / "tasks")
    model, tok, spec = load("smollm2-135m", adapter=adapter, dtype="float32")
    assert spec.method == "yarn" and spec.factor == 2.0  # the adapter's own spec
    kw = dict(tasks=[TASK], include_path=[task_dir], batch_size=2)
    s = run_harness(model, tok, spec, out_dir=tmp_path / "static", **kw)
    assert s["tasks"][TASK]["n"] == 3 and s["window"] == 16384
    static = loglikelihoods(read_jsonl(tmp_path / "static/harness" / f"samples_{TASK}.jsonl"))
    export = _hf_on_export(merged, task_dir)
    assert max_diff(static, export) < 2e-4

    model, tok, spec = load("smollm2-135m", adapter=adapter, rope=DYNAMIC, dtype="float32")
    s = run_harness(model, tok, spec, out_dir=tmp_path / "dynamic", **kw)
    rows = read_jsonl(tmp_path / "dynamic/harness" / f"samples_{TASK}.jsonl")
    dynamic = loglikelihoods(rows)
    assert max_diff(dynamic, patched_forward(model, tok, rows)) < 2e-4
    assert max_diff(dynamic, export) > 0.1  # a static export is another model
    assert s["rope_spec"]["method"] == "dynamic-yarn" and s["window"] is None
    results = json.loads((tmp_path / "dynamic/lm_eval_results.json").read_text())
    assert TASK in results["results"] and "acc,none" in results["results"][TASK]


@needs_lm_eval
def test_finished_tasks_are_skipped_and_other_settings_refused(tmp_path):
    from eval_fixtures import tiny_llama, tiny_tokenizer

    from longqa.eval.harness import run_harness

    model, tok = tiny_llama(), tiny_tokenizer()
    task_dir = write_task(tmp_path / "tasks", n_docs=2)
    kw = dict(tasks=[TASK], include_path=[task_dir], out_dir=tmp_path / "run")
    first = run_harness(model, tok, None, **kw)
    samples = tmp_path / "run/harness" / f"samples_{TASK}.jsonl"
    stamp = samples.stat().st_mtime_ns
    again = run_harness(model, tok, None, **kw)
    assert samples.stat().st_mtime_ns == stamp and again["tasks"] == first["tasks"]
    with pytest.raises(LongqaError, match="different settings"):
        run_harness(model, tok, None, limit=1, **kw)


@needs_lm_eval
@pytest.mark.model
@pytest.mark.integration
def test_command_lines_agree(tmp_path, yarn_adapter):
    """`longqa eval harness` and `lm_eval --model hf` on the export, both as commands (8 documents);
    then a dynamic run against longqa's patched forward."""
    from longqa.models.load import load

    adapter, merged = yarn_adapter
    task_dir = write_task(tmp_path / "tasks", n_docs=8)
    env = {"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": str(Path(sys.executable).parent)}
    env = {**os.environ, **env}
    longqa = [
        sys.executable,
        "-m",
        "longqa.cli.app",
        "eval",
        "harness",
        "--tasks",
        TASK,
        "--include-path",
        str(task_dir),
        "--adapter",
        str(adapter),
        "--batch-size",
        "4",
    ]
    subprocess.run([*longqa, "--out", str(tmp_path / "static")], check=True, env=env)
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={merged},dtype=float32", "--tasks", TASK, "--include_path", str(task_dir),
         "--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "hf"),
         "--log_samples"], check=True, env={**env, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    (hf_file,) = (tmp_path / "hf").rglob(f"samples_{TASK}_*.jsonl")
    export = loglikelihoods(read_jsonl(hf_file))
    static = loglikelihoods(read_jsonl(tmp_path / "static/harness" / f"samples_{TASK}.jsonl"))
    assert len(static) == 24 and max_diff(static, export) < 2e-4

    dyn = ["--rope", "dynamic-yarn", "--rope-original-max-position-embeddings", "16",
           "--rope-margin", "0", "--out", str(tmp_path / "dynamic")]  # fmt: skip
    subprocess.run([*longqa, *dyn], check=True, env=env)
    rows = read_jsonl(tmp_path / "dynamic/harness" / f"samples_{TASK}.jsonl")
    model, tok, _ = load("smollm2-135m", adapter=adapter, rope=DYNAMIC, dtype="float32")
    assert max_diff(loglikelihoods(rows), patched_forward(model, tok, rows)) < 2e-4
    assert max_diff(loglikelihoods(rows), export) > 0.1
