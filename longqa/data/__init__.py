"""Data layer: what a sample is and how any dataset becomes one.

Modules: ``schema`` (the builders' sample schema, ``read_samples``), ``sources`` (files, folders,
Parquet, ``datasets`` folders, .gz/.zst → rows), ``formats`` (the one converter: messages, OpenAI,
ShareGPT, Alpaca, text rows → records), ``conversation`` (the one conversation encoder: rendered
text, ids, offsets, assistant token positions), ``inspection`` (``longqa data inspect``), ``tokens``
(token counting and the approximate codec), ``llm`` / ``llm_cache`` (the OpenAI-compatible client).
"""
