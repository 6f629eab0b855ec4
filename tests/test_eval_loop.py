"""The one evaluation loop: every generation eval runs through ``run_generation_eval`` and
summarises per length with ``mean_by``."""

from __future__ import annotations

import pytest

from longqa.eval import needle, passage_retrieval, passkey
from longqa.eval import runner as runner_mod
from longqa.eval.ruler import runner as ruler_runner
from longqa.eval.runner import mean_by


def test_mean_by_groups_sorts_and_labels():
    rows = [
        {"length": 8192, "depth": 0.5, "correct": True},
        {"length": 4096, "depth": 0.5, "correct": False},
        {"length": 4096, "depth": 0.25, "correct": True},
        {"length": 8192, "depth": 0.25, "correct": True},
    ]
    assert mean_by(rows, "length", "correct") == {"4096": 0.5, "8192": 1.0}
    assert list(mean_by(rows, "depth", "correct", label=lambda d: f"{d:g}")) == ["0.25", "0.5"]
    cells = mean_by(rows, lambda r: (r["length"], r["depth"]), "correct", label=lambda k: k)
    assert cells[(4096, 0.5)] == 0.0 and len(cells) == 4
    assert mean_by([], "length") == {}


@pytest.mark.parametrize(
    ("module", "run", "kwargs"),
    [
        (passkey, "run_passkey", {"lengths": [64]}),
        (needle, "run_needle", {"haystack": "h", "lengths": [64], "depths": [0.5], "out_dir": "o"}),
        (passage_retrieval, "run_passage_retrieval", {"data": "d.jsonl", "out_dir": "o"}),
        (ruler_runner, "run_ruler", {"lengths": [64], "tasks": "niah_single_1"}),
    ],
)
def test_every_generation_eval_runs_through_the_one_loop(monkeypatch, module, run, kwargs):
    seen: list[str] = []

    def loop(*args, task, **kw):
        seen.append(task)
        raise StopIteration  # the loop is reached: enough

    monkeypatch.setattr(runner_mod, "run_generation_eval", loop)
    for name, fake in {
        "make_trials": lambda *a, **k: [],
        "load_haystack": lambda *a, **k: "text",
        "make_items": lambda *a, **k: ([], {}) if module is ruler_runner else [],
        "read_longbench": lambda *a, **k: [],
        "detect_lang": lambda *a, **k: "en",
        "default_max_length": lambda *a, **k: 64,
        "gen_context": lambda *a, **k: None,
    }.items():
        if hasattr(module, name):
            monkeypatch.setattr(module, name, fake)
    with pytest.raises(StopIteration):
        getattr(module, run)(None, None, None, **kwargs)
    assert len(seen) == 1
