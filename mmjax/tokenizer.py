"""Tokenizers that need no download: UTF-8 bytes, or a word vocabulary built from data.

Both map text to int32 ids with ``0 = padding`` (the text encoders' convention)
and store their vocabulary as JSON, so it can be saved next to a checkpoint::

    tok = WordTokenizer.build(train_texts, max_vocab=8000, min_count=2)
    ids, mask = tok.encode_batch(["a cat", "a dog sat"], max_len=16)   # (2, 16) int32, (2, 16) bool
    tok.save(ckpt_dir / "tokenizer.json");  tok = load(ckpt_dir / "tokenizer.json")

Pure Python / numpy: no tensorflow, no network.
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from mmjax import errors

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3 in both tokenizers
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

# Words are runs of letters/digits (with inner apostrophes, "don't"); every
# other non-space character is a token of its own.
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_", re.UNICODE)


class TokenizerError(errors.InputError):
    """Bad tokenizer input or a malformed saved vocabulary."""


def _pad(ids: List[int], max_len: Optional[int], add_eos: bool) -> Tuple[np.ndarray, np.ndarray]:
    if max_len is not None:
        if max_len < 1:
            raise TokenizerError(f"max_len must be >= 1, got {max_len}")
        if len(ids) > max_len:
            # Truncate but keep the end marker so the model still sees where text ends.
            ids = ids[: max_len - 1] + [EOS_ID] if add_eos else ids[:max_len]
        n = max_len
    else:
        n = len(ids)
    out = np.zeros((n,), np.int32)
    out[: len(ids)] = ids
    mask = np.zeros((n,), bool)
    mask[: len(ids)] = True
    return out, mask


class _Base:
    kind = ""

    def encode(
        self, text: str, max_len: Optional[int] = None, *, add_bos: bool = True, add_eos: bool = True
    ) -> Tuple[np.ndarray, np.ndarray]:
        """text -> (ids (L,) int32, mask (L,) bool), right-padded with 0 to ``max_len``.

        Texts longer than ``max_len`` are truncated (the EOS id is kept last).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"{self.kind} tokenizer: expected str, got {type(text).__name__}")
        ids = ([BOS_ID] if add_bos else []) + self._ids(text) + ([EOS_ID] if add_eos else [])
        return _pad(ids, max_len, add_eos)

    def encode_batch(
        self, texts: Sequence[str], max_len: Optional[int] = None, **kwargs
    ) -> Tuple[np.ndarray, np.ndarray]:
        """texts -> (ids (B, L) int32, mask (B, L) bool); L = ``max_len`` or the longest text."""
        encoded = [self.encode(t, None, **kwargs) for t in texts]
        if max_len is None:
            max_len = max([len(ids) for ids, _ in encoded], default=1) or 1
        ids = np.zeros((len(texts), max_len), np.int32)
        mask = np.zeros((len(texts), max_len), bool)
        add_eos = kwargs.get("add_eos", True)
        for i, (row, _) in enumerate(encoded):
            ids[i], mask[i] = _pad(list(row), max_len, add_eos)
        return ids, mask

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _ids(self, text: str) -> List[int]:
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError

    # ``load(path)`` (a classmethod checking the type) is attached below.

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the tokenizer as JSON (atomically: temp file, then rename)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        os.replace(tmp, path)


class ByteTokenizer(_Base):
    """UTF-8 bytes, shifted past the specials: byte b has id b + 4; vocab_size 260.

    ``decode`` drops specials and replaces invalid UTF-8 (e.g. a truncated
    multi-byte character) with U+FFFD.
    """

    kind = "byte"
    offset = len(SPECIALS)

    @property
    def vocab_size(self) -> int:
        return 256 + self.offset

    def _ids(self, text: str) -> List[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        out = bytearray()
        for i in np.asarray(list(ids), np.int64).reshape(-1):
            if i >= self.offset:
                out.append(int(i) - self.offset)
            elif not skip_special:
                out.extend(SPECIALS[int(i)].encode())
        return out.decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"type": "byte"})

    @classmethod
    def from_json(cls, text: str) -> "ByteTokenizer":
        data = json.loads(text)
        if data.get("type") != "byte":
            raise TokenizerError(f"not a byte tokenizer: type={data.get('type')!r}")
        return cls()

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteTokenizer)


class WordTokenizer(_Base):
    """Lowercased words and punctuation; ids 0..3 are pad/unk/bos/eos, then words by
    decreasing frequency (ties alphabetical, so the vocabulary is deterministic).

    ``decode`` joins words with spaces (the exact original spacing is not kept).
    """

    kind = "word"

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise TokenizerError(f"word vocabulary must start with {SPECIALS}, got {vocab[:4]}")
        if len(set(vocab)) != len(vocab):
            raise TokenizerError("word vocabulary has duplicate entries")
        self.vocab: List[str] = vocab
        self.index: Dict[str, int] = {w: i for i, w in enumerate(vocab)}

    @staticmethod
    def split(text: str) -> List[str]:
        """Lowercase and split into words / punctuation."""
        return _WORD_RE.findall(text.lower())

    @classmethod
    def build(cls, texts: Iterable[str], max_vocab: int = 30000, min_count: int = 1) -> "WordTokenizer":
        """Vocabulary of the ``max_vocab - 4`` most frequent words seen at least ``min_count`` times."""
        if max_vocab <= len(SPECIALS):
            raise TokenizerError(f"max_vocab must exceed the {len(SPECIALS)} specials, got {max_vocab}")
        counts = collections.Counter()
        for t in texts:
            counts.update(cls.split(t))
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words[: max_vocab - len(SPECIALS)])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _ids(self, text: str) -> List[int]:
        return [self.index.get(w, UNK_ID) for w in self.split(text)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        words = []
        for i in np.asarray(list(ids), np.int64).reshape(-1):
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise TokenizerError(f"word tokenizer: id {i} outside vocabulary of {len(self.vocab)}")
            if skip_special and i in (PAD_ID, BOS_ID, EOS_ID):
                continue
            words.append(self.vocab[i])
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"type": "word", "vocab": self.vocab}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "WordTokenizer":
        data = json.loads(text)
        if data.get("type") != "word" or "vocab" not in data:
            raise TokenizerError(f"not a word tokenizer: type={data.get('type')!r}")
        return cls(data["vocab"])

    def __eq__(self, other) -> bool:
        return isinstance(other, WordTokenizer) and self.vocab == other.vocab


Tokenizer = Union[ByteTokenizer, WordTokenizer]


def from_json(text: str) -> Tokenizer:
    """Rebuilds whichever tokenizer ``to_json`` wrote."""
    try:
        kind = json.loads(text).get("type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise TokenizerError(f"malformed tokenizer JSON: {e}") from None
    if kind == "byte":
        return ByteTokenizer.from_json(text)
    if kind == "word":
        return WordTokenizer.from_json(text)
    raise TokenizerError(f"unknown tokenizer type {kind!r} (expected 'byte' or 'word')")


def load(path: Union[str, os.PathLike]) -> Tokenizer:
    """Reads a tokenizer written by ``save``."""
    with open(os.fspath(path), encoding="utf-8") as f:
        return from_json(f.read())


def _load_as(cls, path):
    tok = load(path)
    if not isinstance(tok, cls):
        raise TokenizerError(f"{os.fspath(path)} holds a {tok.kind} tokenizer, not a {cls.kind} one")
    return tok


ByteTokenizer.load = classmethod(_load_as)  # type: ignore[attr-defined]
WordTokenizer.load = classmethod(_load_as)  # type: ignore[attr-defined]
