"""Byte and word tokenizers: ids, padding, round trips, JSON save/load."""
import json

import numpy as np
import pytest

from mmjax import tokenizer as tk


def test_byte_ids_are_utf8_bytes_plus_offset():
    tok = tk.ByteTokenizer()
    ids, mask = tok.encode("hé", max_len=6)
    # bos, 'h' (0x68), 'é' = c3 a9, eos, pad
    np.testing.assert_array_equal(ids, [tk.BOS_ID, 0x68 + 4, 0xC3 + 4, 0xA9 + 4, tk.EOS_ID, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0])
    assert tok.vocab_size == 260 and ids.dtype == np.int32


@pytest.mark.parametrize("text", ["", "hello world", "naïve café ☕ 日本語 🎉", "tabs\tand\nnewlines"])
def test_byte_round_trip(text):
    tok = tk.ByteTokenizer()
    ids, mask = tok.encode(text)
    assert mask.all() and len(ids) == len(text.encode()) + 2
    assert tok.decode(ids) == text


def test_truncation_keeps_eos_and_batch_padding():
    tok = tk.ByteTokenizer()
    ids, mask = tok.encode("abcdefgh", max_len=4)
    np.testing.assert_array_equal(ids, [tk.BOS_ID, ord("a") + 4, ord("b") + 4, tk.EOS_ID])
    batch, bmask = tok.encode_batch(["a", "abc"])
    assert batch.shape == (2, 5) and bmask.sum(1).tolist() == [3, 5]
    assert (batch[~bmask] == 0).all()
    assert tok.decode(batch[0]) == "a"
    with pytest.raises(ValueError, match="max_len"):
        tok.encode("a", max_len=0)


def test_word_build_orders_by_frequency_and_respects_limits():
    texts = ["The cat sat.", "the cat ran!", "A dog sat", "the end"]
    tok = tk.WordTokenizer.build(texts, max_vocab=8, min_count=2)
    # counts: the 3, cat 2, sat 2, everything else 1 (dropped by min_count)
    assert tok.vocab == ["<pad>", "<unk>", "<bos>", "<eos>", "the", "cat", "sat"]
    small = tk.WordTokenizer.build(texts, max_vocab=5)
    assert small.vocab[4:] == ["the"] and small.vocab_size == 5
    assert tk.WordTokenizer.split("Don't STOP, now_ok") == ["don't", "stop", ",", "now", "_", "ok"]


def test_word_encode_decode_and_unknown_words():
    tok = tk.WordTokenizer.build(["the cat sat on the mat", "a dog"], max_vocab=100)
    ids, mask = tok.encode("The CAT sat on a zebra", max_len=10)
    words = [tok.vocab[i] for i in ids[mask]]
    assert words == ["<bos>", "the", "cat", "sat", "on", "a", "<unk>", "<eos>"]
    assert tok.decode(ids) == "the cat sat on a <unk>"
    assert tok.decode(tok.encode("the dog sat")[0]) == "the dog sat"
    with pytest.raises(ValueError, match="outside vocabulary"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("make", [lambda: tk.ByteTokenizer(),
                                  lambda: tk.WordTokenizer.build(["héllo wörld", "hello again"], max_vocab=50)])
def test_save_load_round_trip(tmp_path, make):
    tok = make()
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    json.loads(path.read_text(encoding="utf-8"))  # plain JSON on disk
    loaded = tk.load(path)
    assert type(loaded) is type(tok) and loaded == tok
    assert type(tok).load(path) == tok
    text = "hello wörld again"
    np.testing.assert_array_equal(loaded.encode(text, 12)[0], tok.encode(text, 12)[0])
    assert tk.from_json(tok.to_json()) == tok


def test_load_errors(tmp_path):
    path = tmp_path / "t.json"
    tk.ByteTokenizer().save(path)
    with pytest.raises(ValueError, match="holds a byte tokenizer, not a word one"):
        tk.WordTokenizer.load(path)
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tk.from_json('{"type": "bpe"}')
    with pytest.raises(ValueError, match="must start with"):
        tk.WordTokenizer(["a", "b"])
