"""What the tests, the benchmarks and the dry runs share; nothing else in longqa imports it.

Modules: ``tiny`` (a 2-layer random Llama, LoRA with a non-zero ``lora_B``), ``openai_stub`` (an
OpenAI-compatible HTTP server with scripted replies), ``llama_server`` (a real llama.cpp server on a
float16 GGUF of SmolLM2).
"""
