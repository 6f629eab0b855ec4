"""``longqa analyze …``: effective tokens and attention shape (thin wrappers over longqa.analyze).

    longqa analyze effective-tokens --data runs/data --compare runs/data-plain \\
        --model smollm2-135m --out runs/eff
    longqa analyze attention --data runs/data --model smollm2-135m --adapter runs/a \\
        --compare-base --out runs/attn
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from longqa.cli.eval import AdapterOpt, ModelOpt
from longqa.cli.options import rope_options
from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.core.folder_lock import hold_for_command

app = typer.Typer(
    help="Measure effective tokens and attention shape (U vs W).", no_args_is_help=True
)


@app.command("effective-tokens")
@rope_options
def effective_tokens_cmd(
    data: Annotated[Path, typer.Option(help="dataset (our JSONL schema, file or folder)")],
    model: ModelOpt = "smollm2-135m",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/analyze/effective"),
    compare: Annotated[
        Path | None, typer.Option(help="a second dataset to compare side by side")
    ] = None,
    adapter: AdapterOpt = None,
    rope: RopeConfig | None = None,
    threshold: Annotated[
        float, typer.Option(help="gap in nats that makes a token effective")
    ] = 1.0,
    ablation: Annotated[str, typer.Option(help="remove | distractor")] = "remove",
    max_samples: Annotated[int | None, typer.Option(help="analyse at most N samples each")] = None,
) -> None:
    """Share of assistant tokens whose prediction needs the relevant document (JSON + PNG)."""
    from rich.console import Console
    from rich.table import Table

    from longqa.analyze.runner import analyze_effective_tokens

    if ablation not in ("remove", "distractor"):
        raise LongqaError(f"--ablation must be remove or distractor (got '{ablation}')")
    hold_for_command(out)
    datasets = {data.name or "data": str(data)}
    if compare is not None:
        datasets[compare.name if compare.name not in datasets else "compare"] = str(compare)
    report = analyze_effective_tokens(
        datasets,
        model=model,
        out=out,
        adapter=adapter,
        rope=rope,
        threshold=threshold,
        mode=ablation,
        max_samples=max_samples,
    )
    table = Table(title=f"effective tokens (gap > {threshold} nats, ablation: {ablation})")
    for col in ("dataset", "samples", "tokens", "effective", "in quotes", "in answers"):
        table.add_column(col)
    for name, rep in report["datasets"].items():
        o = rep["overall"]

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        table.add_row(
            name,
            str(o["samples"]),
            str(o["tokens"]),
            pct(o["effective_share"]),
            pct(o["quote_effective_share"]),
            pct(o["answer_effective_share"]),
        )
    Console().print(table)
    print(f"report: {out / 'report.json'}  plot: {out / 'effective_tokens.png'}")


@app.command("attention")
@rope_options
def attention_cmd(
    data: Annotated[Path, typer.Option(help="dataset (our JSONL schema, file or folder)")],
    model: ModelOpt = "smollm2-135m",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/analyze/attention"),
    sample: Annotated[int, typer.Option(help="index of the sample in the dataset")] = 0,
    turn: Annotated[int, typer.Option(help="which assistant turn to analyse")] = 0,
    bins: Annotated[int, typer.Option(help="relative-position bins")] = 50,
    adapter: AdapterOpt = None,
    compare_base: Annotated[bool, typer.Option(help="also plot the base model")] = False,
    per_layer: Annotated[bool, typer.Option(help="also write a per-layer heatmap")] = False,
    rope: RopeConfig | None = None,
) -> None:
    """Attention mass of the answer tokens over relative context position (eager attention)."""
    from longqa.analyze.runner import analyze_attention

    hold_for_command(out)
    profiles = analyze_attention(
        str(data),
        model=model,
        out=out,
        adapter=adapter,
        rope=rope,
        sample_index=sample,
        turn=turn,
        bins=bins,
        per_layer=per_layer,
        compare_base=compare_base,
    )
    for name, prof in profiles.items():
        s = prof.summary()
        line = ", ".join(f"{k} {v:.3f}" for k, v in s.items())
        print(f"{name}: {line}")
    print(f"plot: {out / 'attention.png'}  data: {out / 'attention.json'}")
