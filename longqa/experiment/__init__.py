"""Experiments: a YAML file of arms × evaluations run end to end with statistics.

``longqa experiment run experiments/paraphrase-ablation.yaml --out runs/exp`` — see
:mod:`longqa.experiment.run` (stages), :mod:`~longqa.experiment.schema` (the file),
:mod:`~longqa.experiment.plan` (``--dry-run``), :mod:`~longqa.experiment.stats` (intervals) and
:mod:`~longqa.experiment.report` (results.md / results.json / PNGs).
"""
