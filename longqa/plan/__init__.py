"""GPU memory planning: will a recipe fit, and how long a context does.

Used by ``longqa train --plan`` and the GPU benchmarks; training itself never imports it.

Modules: ``memory`` (one GPU: :func:`~longqa.plan.memory.plan_memory`, the longest length that
fits), ``terms`` (the measured per-token terms of one decoder layer), ``parallel`` (the same
estimate per GPU under each ``--launch`` mode).
"""
