"""Tiny models, tokenizers and datasets for the trainer tests (no downloads, runs in seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "system user assistant the a cat dog sat on mat red blue green one two three four five six "
    "seven eight nine ten what is color of sky sea grass answer question document says quote "
    "hello world yes no count up down left right big small fast slow"
).split()


def tiny_tokenizer() -> Any:
    """A word-level tokenizer (vocab < 128) with a ChatML chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML
    return fast


def byte_tokenizer(template: str = CHATML) -> Any:
    """A byte-level tokenizer (one token per byte, ChatML specials) that encodes any text."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(BPE(vocab, [], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = template
    return fast


def tiny_model_dir(tmp: Path, *, vocab: int = 128, seed: int = 0) -> Path:
    """Save a random 2-layer Llama (hidden 64) plus the tiny tokenizer as an HF folder."""
    import torch
    from tiny import tiny_llama_config
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_llama_config(
        vocab_size=vocab,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.1,
        pad_token_id=0,
        eos_token_id=3,
        bos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp / "tiny-llama"
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def toy_sft_rows(n: int = 16) -> list[dict[str, Any]]:
    """Deterministic Q/A conversations a tiny model can memorise."""
    colors = ["red", "blue", "green"]
    things = ["sky", "sea", "grass", "cat", "dog", "mat"]
    rows = []
    for i in range(n):
        thing, color = things[i % len(things)], colors[i % len(colors)]
        rows.append(
            {
                "id": f"toy-{i}",
                "task": "toy",
                "messages": [
                    {"role": "user", "content": f"what is the color of the {thing}"},
                    {"role": "assistant", "content": f"the {thing} is {color}"},
                ],
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_recipe(model_dir: Path, data: Path, out: Path, **train: Any) -> Any:
    """A recipe for the tiny model: float32, no quantization, one sft phase."""
    from longqa.config.recipe import recipe_from_dict

    tc = {
        "lr": 5e-3,
        "schedule": "constant",
        "warmup_ratio": 0.0,
        "micro_batch_size": 4,
        "grad_accum": 1,
        "max_length": 64,
        "optim": "adamw_torch",
        "save_steps": 1000,
        "phases": [{"name": "sft", "kind": "sft", "datasets": [{"path": str(data)}], "steps": 10}],
    }
    tc.update(train)
    return recipe_from_dict(
        {
            "name": "tiny",
            "model": {"name": str(model_dir), "dtype": "float32", "quantization": "none"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "train": tc,
            "output": {"dir": str(out)},
        }
    )
