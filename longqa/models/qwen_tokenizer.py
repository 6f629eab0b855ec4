"""Original-Qwen tokenizer (``qwen.tiktoken``) as a transformers fast tokenizer.

Usage::

    from longqa.models.qwen_tokenizer import build_qwen_tokenizer
    tok = build_qwen_tokenizer("Qwen-14B-Chat/qwen.tiktoken")
    tok.save_pretrained(out_dir)            # AutoTokenizer.from_pretrained(out_dir) then works

The original checkpoints ship a tiktoken BPE file (one ``base64(token) rank`` pair per line) and
remote tokenizer code: NFC normalisation, Qwen's pre-tokenisation regex (single digits, unlike
cl100k's ``\\p{N}{1,3}``) and special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``,
``<|extra_0|>`` … ``<|extra_204|>`` numbered from 151643. Here the ranks become a byte-level BPE
(``transformers.convert_slow_tokenizer.TikTokenConverter``) whose ids equal tiktoken's, the special
tokens keep their original ids, and the ChatML chat template of Qwen-Chat is attached.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError

# Upstream Qwen tokenizer constants (tokenization_qwen.py of the original checkpoints).
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
IMSTART = "<|im_start|>"
IMEND = "<|im_end|>"
N_EXTRAS = 205
SPECIAL_START_ID = 151643
DEFAULT_SYSTEM = "You are a helpful assistant."

# ChatML as Qwen-Chat's make_context builds it (a default system turn when none is given).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def special_tokens(start_id: int = SPECIAL_START_ID) -> dict[str, int]:
    """Qwen's special tokens and their ids."""
    names = [ENDOFTEXT, IMSTART, IMEND] + [f"<|extra_{i}|>" for i in range(N_EXTRAS)]
    return {name: start_id + i for i, name in enumerate(names)}


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file (``base64 rank`` per line) with line-numbered errors."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            except (IndexError, ValueError) as exc:
                raise LongqaError(
                    f"{path}:{lineno}: expected 'base64-token rank', got {line[:60]!r} ({exc})"
                ) from None
            ranks[token] = rank
    if not ranks:
        raise LongqaError(f"{path}: empty tiktoken file")
    return ranks


def tiktoken_encoding(path: str | Path, start_id: int = SPECIAL_START_ID) -> Any:
    """The ``tiktoken.Encoding`` the original remote code builds (reference for id checks)."""
    import tiktoken

    return tiktoken.Encoding(
        "qwen",
        pat_str=PAT_STR,
        mergeable_ranks=load_ranks(path),
        special_tokens=special_tokens(start_id),
    )


def build_qwen_tokenizer(
    tiktoken_file: str | Path, *, start_id: int = SPECIAL_START_ID, chat: bool = True
) -> Any:
    """Build a ``PreTrainedTokenizerFast`` equivalent to the original Qwen tokenizer.

    ``chat``: eos is ``<|im_end|>`` (Qwen-Chat) instead of ``<|endoftext|>`` (base model).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(tiktoken_file)
    if not path.is_file():
        raise LongqaError(f"tokenizer file not found: {path} (expected Qwen's qwen.tiktoken)")
    load_ranks(path)  # validate with a readable error before the converter parses it
    converter = TikTokenConverter(vocab_file=str(path), pattern=PAT_STR)
    vocab, merges = converter.extract_vocab_merges_from_model(str(path))
    specials = special_tokens(start_id)
    if set(vocab.values()) & set(specials.values()):
        raise LongqaError(f"{path}: BPE ranks overlap the special-token ids from {start_id}")
    vocab.update(specials)  # explicit ids, so they keep the original numbering
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False))
    tok.model.ignore_merges = True  # tiktoken semantics: a whole piece in the vocab wins
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IMEND if chat else ENDOFTEXT,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast
