"""Tiny random Llama + a tiny byte-level BPE tokenizer for the eval tests (built in-process)."""

from __future__ import annotations

import functools
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[1].parent / "shared/corpora"
ESSAYS = CORPORA / "paul_graham_essays"

_TRAIN_TEXT = [
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them.",
    "What is the pass key? The pass key is 12345. Remember it. 0123456789 is the pass key.",
    "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park.",
    "Here are 30 paragraphs from Wikipedia, along with an abstract. Paragraph 1: Paragraph 2:",
    "以下是若干段落文字，以及其中一个段落的摘要。段落1 段落2 答案是",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A fast byte-level BPE tokenizer with ~320 tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(max_position_embeddings: int = 256, seed: int = 0):
    """A 2-layer random Llama whose vocabulary matches :func:`tiny_tokenizer`."""
    import torch
    from tiny import tiny_llama_config
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_llama_config(
        vocab_size=len(tok),
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


TEMPLATES = {
    # Llama-2 chat: the template writes the BOS into the text
    "llama2": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>\n"
        "{{ m['content'] }}\n<</SYS>>\n\n{% elif m['role'] == 'user' %}[INST] {{ m['content'] }}"
        " [/INST]{% endif %}{% endfor %}"
    ),
    # Llama-3 instruct: BOS in the template too, header tokens per turn
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    # ChatML (Qwen): no BOS at all
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # a base model: no chat template, the tokenizer adds <s> itself
    "base": None,
}
_BOS = {"llama2": "<s>", "llama3": "<|begin_of_text|>", "chatml": None, "base": "<s>"}
_SPECIALS = ["<s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
_SPECIALS += ["<|im_start|>", "<|im_end|>"]


@functools.cache
def template_tokenizer(kind: str):
    """The tiny BPE vocabulary behaving like a Llama-2, Llama-3, ChatML or template-less base
    tokenizer: which BOS ``tokenizer(text)`` adds (post-processor) and what the template writes."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tiny_tokenizer().backend_tokenizer.to_str())
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _SPECIALS])
    bos = _BOS[kind]
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="<eos>", pad_token="<pad>"
    )
    fast.chat_template = TEMPLATES[kind]
    return fast
