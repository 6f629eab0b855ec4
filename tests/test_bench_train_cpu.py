"""CPU training benchmark: ratios table, variant check."""

from __future__ import annotations

from bench_modules import bench_fixture

bench = bench_fixture("bench_train_cpu")


def _rec(variant, s, cpu, rss, length=2048, quant="none"):
    return {"variant": variant, "length": length, "quant": quant, "steps": 3, "s_per_step": s,
            "cpu_s_per_step": cpu, "peak_rss_gb": rss}  # fmt: skip


def test_markdown_reports_ratios_to_plain(bench):
    results = [
        _rec("plain", 10.0, 20.0, 4.0),
        _rec("longqa", 12.0, 15.0, 1.0),
        {"variant": "longqa tiled MLP", "length": 2048, "quant": "none", "error": "boom"},
        _rec("longqa", 1.0, 1.0, 1.0, quant="nf4"),  # no plain run for nf4
    ]
    text = bench.markdown(results, "python benchmarks/bench_train_cpu.py")
    assert "| 2048 | none | longqa | 1.20× | 0.75× | 0.25× | 2 (1 run) |" in text
    assert "| 2048 | none | longqa tiled MLP | failed: boom |" in text
    assert "| 2048 | nf4 | longqa | failed: no plain run |" in text
    assert "Command: `python benchmarks/bench_train_cpu.py`" in text


def test_repeats_pair_each_run_with_the_plain_run_of_its_repeat(bench):
    results = [
        {**_rec("plain", 10.0, 20.0, 4.0), "repeat": 0},
        {**_rec("longqa", 9.0, 18.0, 1.0), "repeat": 0},
        {**_rec("plain", 20.0, 40.0, 4.0), "repeat": 1},  # a loaded second round: both slower
        {**_rec("longqa", 19.0, 40.0, 2.0), "repeat": 1},
        {**_rec("plain", 10.0, 20.0, 4.0), "repeat": 2},
        {**_rec("longqa", 10.5, 21.0, 1.0), "repeat": 2},
    ]
    text = bench.markdown(results, "cmd")
    # medians of the per-repeat ratios (0.9, 0.95, 1.05), (0.9, 1.0, 1.05), (0.25, 0.5, 0.25)
    assert "| 2048 | none | longqa | 0.95× | 1.00× | 0.25× | 6 (3 runs) |" in text


def test_longqa_workers_start_with_the_huge_pages_tunable_plain_without(bench, monkeypatch):
    import longqa.train.cpu_memory as cpu_memory

    monkeypatch.setattr(cpu_memory, "huge_pages_supported", lambda: True)
    monkeypatch.setenv(
        "GLIBC_TUNABLES", f"glibc.malloc.arena_max=2:{cpu_memory.HUGE_PAGES_TUNABLE}"
    )
    tunable = cpu_memory.HUGE_PAGES_TUNABLE
    assert bench.worker_env("plain")["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    assert bench.worker_env("longqa 4k pages")["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    assert bench.worker_env("longqa")["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{tunable}"
    monkeypatch.setattr(cpu_memory, "huge_pages_supported", lambda: False)
    assert bench.worker_env("longqa")["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"


def test_unknown_variant_is_rejected(bench, capsys):
    assert bench.main(["--variants", "turbo"]) == 2
    assert "unknown variant(s) ['turbo']" in capsys.readouterr().err


def test_every_variant_is_a_valid_recipe_override(bench):
    from longqa.config.recipe import load_recipe

    for overrides in bench.VARIANTS.values():
        if overrides is not None:
            load_recipe(bench.RECIPE, overrides)  # raises on a bad key
    assert load_recipe(bench.RECIPE, bench.VARIANTS["longqa glibc default"]).memory == (
        load_recipe(bench.RECIPE, ["memory.cpu_return_freed=false"]).memory
    )
