"""long-pretrain: selection by length, ChatQA-2-style packing to exact lengths, round trips."""

from __future__ import annotations

import json

import pytest
from builder_texts import prose

from data_builders.long_pretrain import Options, build, pack
from data_builders.text import count_words
from longqa.core.errors import LongqaError
from longqa.data.schema import read_samples
from longqa.data.tokens import ApproxTokenCounter, HFTokenCounter


def test_pack_exact_lengths_in_order_and_tail():
    docs = [("a", list(range(10))), ("b", list(range(100, 103))), ("c", list(range(200, 215)))]
    sep = [-1, -2]
    from data_builders.long_pretrain import PackResult

    res = PackResult()
    seqs = list(pack(docs, sep, 7, res))
    stream = [t for _, ids in docs for t in ids + sep]
    assert all(len(s.ids) == 7 for s in seqs)
    assert [t for s in seqs for t in s.ids] == stream[: 7 * len(seqs)]
    assert res.tail_tokens == len(stream) - 7 * len(seqs) == 34 - 28
    assert seqs[0].pieces == [("a", 0, 7, False)]
    assert seqs[1].pieces == [("a", 7, 10, True), ("b", 0, 2, False)]


def _corpus(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    docs = {
        "a_en.txt": prose("en", 12, 1),  # ~ 800 words
        "b_zh.txt": prose("zh", 10, 2),  # ~ 1400 characters
        "c_short.txt": prose("en", 1, 3),  # below --min-words
        "d_empty.txt": "",
        "e_dup.txt": prose("en", 12, 1),  # exact duplicate of a_en
    }
    for name, text in docs.items():
        (src / name).write_text(text, encoding="utf-8")
    rows = [{"text": prose("en", 20, 4)}, {"body": "wrong field"}]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (src / "f_more.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = [docs["a_en.txt"], docs["b_zh.txt"], rows[0]["text"]]
    return src, expected


def _all_ids(out):
    samples = list(read_samples(out))
    assert [s.id for s in samples] == [f"lp-{i:07d}" for i in range(len(samples))]
    return samples, [t for s in samples for t in s.meta["input_ids"]]


def test_build_round_trip_with_approx_codec(tmp_path):
    src, expected = _corpus(tmp_path)
    codec = ApproxTokenCounter()
    opts = Options(corpus=src, out=tmp_path / "out", min_words=300, target_tokens=512)
    stats = build(opts, codec=codec)
    samples, ids = _all_ids(tmp_path / "out")
    stream = "".join(doc + "<s>" for doc in expected)
    assert all(s.meta["n_tokens"] == len(s.meta["input_ids"]) == 512 for s in samples)
    assert len(samples) == stats["sequences"] > 3
    assert codec.decode(ids) + stream[len(codec.decode(ids)) :] == stream
    assert len(codec.encode(stream)) - len(ids) == stats["tail_tokens_dropped"] < 512
    assert "".join(s.text for s in samples) == codec.decode(ids)  # text is the decoded sequence
    assert "".join(s.text for s in samples).count("<s>") == stream.count("<s>") - (
        1 if stats["tail_tokens_dropped"] else 0
    )
    order = [p[0] for s in samples for p in s.meta["docs"]]
    assert list(dict.fromkeys(order)) == [
        str(src / "a_en.txt"),
        str(src / "b_zh.txt"),
        f"{src / 'f_more.jsonl'}:1",
    ]
    assert stats["skipped"] == {"too_short": 2, "duplicates": 1, "bad_lines": 2}
    assert stats["selected_documents"] == 3 and stats["languages"] == {"en": 2, "zh": 1}
    assert {s.lang for s in samples} == {"en", "zh"}


def _tiny_bpe(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_build_with_hf_tokenizer_upsampling_and_separator(tmp_path):
    src, expected = _corpus(tmp_path)
    hf = _tiny_bpe(expected)
    codec = HFTokenCounter(hf, "tiny-bpe")
    opts = Options(
        corpus=str(src),
        out=tmp_path / "out",
        min_words=300,
        target_tokens=1000,
        separator="\n<s>\n",
        upsample=2,
        upsample_min_words=1200,  # only the two longest documents are repeated
    )
    stats = build(opts, codec=codec)
    samples, ids = _all_ids(tmp_path / "out")
    assert all(len(s.meta["input_ids"]) == 1000 for s in samples)
    long_docs = [d for d in expected if count_words(d) >= 1200]
    assert stats["upsampled_copies"] == len(long_docs) == 2
    full = [t for d in expected + long_docs for t in codec.encode(d) + codec.encode("\n<s>\n")]
    assert ids == full[: len(ids)] and len(full) - len(ids) == stats["tail_tokens_dropped"]
    assert hf.decode(full) == "".join(d + "\n<s>\n" for d in expected + long_docs)
    copies = [p[0] for s in samples for p in s.meta["docs"] if "#copy" in p[0]]
    assert copies and all(c.endswith("#copy1") for c in copies)


def test_no_long_document_is_an_error(tmp_path):
    src, _ = _corpus(tmp_path)
    with pytest.raises(LongqaError, match="--min-words 16000"):
        build(Options(corpus=src, out=tmp_path / "o", tokenizer="approx"))


def test_count_words_chinese_characters_english_words():
    assert count_words("The harbour master wrote 3 letters.") == 6
    assert count_words("老船长在日记中写道，潮水很高。") == 13  # characters, punctuation excluded
    assert count_words("我们 love 长文本 models") == 7


def test_essays_corpus_selection(essays_dir, tmp_path):
    codec = ApproxTokenCounter()
    opts = Options(corpus=essays_dir, out=tmp_path / "o", min_words=6000, target_tokens=4096)
    stats = build(opts, codec=codec)
    assert 0 < stats["selected_documents"] < stats["raw_documents"]
    assert stats["skipped"]["too_short"] == stats["raw_documents"] - stats["selected_documents"]
    samples, ids = _all_ids(tmp_path / "o")
    assert all(len(s.meta["input_ids"]) == 4096 for s in samples)
    assert codec.decode(ids).count("<s>") >= stats["selected_documents"] - 1


@pytest.mark.slow
def test_real_tokenizer_exact_lengths(essays_dir, tmp_path):
    opts = Options(
        corpus=essays_dir, out=tmp_path / "o", min_words=8000, target_tokens=8192,
        tokenizer="smollm2-135m",
    )  # fmt: skip
    stats = build(opts)
    samples, ids = _all_ids(tmp_path / "o")
    assert samples and all(len(s.meta["input_ids"]) == 8192 for s in samples)
    from longqa.models.checkpoints import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    assert tok.decode(ids).count("<s>") >= stats["selected_documents"] - 1
