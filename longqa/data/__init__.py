"""Data layer: what a sample is and how any dataset becomes one.

Modules: ``schema`` (the builders' sample schema, ``read_samples``), ``sources`` (paths, folders,
``datasets`` folders → rows, with what was detected and skipped), ``files`` (one file → rows:
JSONL/JSON/CSV/TSV/Parquet/text, compression by magic bytes, BOM), ``formats`` (the one converter:
messages, OpenAI, ShareGPT, Alpaca, columns, text rows → records), ``bad_rows`` (the one-line
``BadRow`` error), ``tool_calls`` (OpenAI tool calls: read, and rendered for a chat template),
``conversation`` (the one conversation encoder: rendered text, ids, offsets, assistant token
positions), ``inspection`` (``longqa data inspect``), ``tokens`` (token counting and the approximate
codec), ``llm`` / ``llm_cache`` (the OpenAI-compatible client).
"""
