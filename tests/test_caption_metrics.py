"""BLEU against sacrebleu (test-only reference) and CIDEr-D against hand-computed values."""
import math

import pytest

from mmjax.caption_metrics import CaptionMetricError, cider_d, corpus_bleu, tokenize_13a

sacrebleu = pytest.importorskip("sacrebleu")

HYPS = [
    "A man is riding a horse on the beach.",
    "Two dogs play with a red ball, in 2.5 seconds!",
    "a cat",
    "The kitchen has a stove and a sink-top (white).",
]
REFS = [
    ["A man rides a horse along the beach.", "A person riding a horse on a beach."],
    ["Two dogs are playing with a red ball.", "Dogs playing with a ball in 2.5 seconds."],
    ["A small cat sits on the mat.", "a cat on a mat"],
    ["A white kitchen with a stove and a sink.", "The kitchen has a stove, a sink & an oven."],
]


def test_tokenizer_matches_sacrebleu_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    for s in HYPS + [r for refs in REFS for r in refs] + ["a &amp; b &quot;c&quot; 3-4 x-y 1,000.5 end."]:
        assert tokenize_13a(s) == tok(s.rstrip()).split()


@pytest.mark.parametrize("lowercase", [False, True])
def test_corpus_bleu_matches_sacrebleu(lowercase):
    ours = corpus_bleu(HYPS, REFS, lowercase=lowercase)
    streams = [list(r) for r in zip(*REFS)]
    ref = sacrebleu.corpus_bleu(HYPS, streams, lowercase=lowercase)
    assert ours["bleu"] == pytest.approx(ref.score, rel=1e-9)
    assert ours["bp"] == pytest.approx(ref.bp, rel=1e-9)
    assert ours["sys_len"] == ref.sys_len and ours["ref_len"] == ref.ref_len


def test_bleu_brevity_penalty_and_smoothing_match_sacrebleu():
    hyps = ["the cat", "a dog runs"]  # short: bp < 1, no 4-grams at all
    refs = [["the cat sat on the mat today"], ["a dog runs fast in the park"]]
    ours = corpus_bleu(hyps, refs)
    ref = sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]])
    assert ours["bp"] < 1
    assert ours["bleu"] == pytest.approx(ref.score, rel=1e-9)
    hyps = ["the cat sat on a mat", "a dog runs fast in a park"]  # some zero 4-gram matches -> exp smoothing
    ours = corpus_bleu(hyps, refs)
    ref = sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]])
    assert ours["bleu"] == pytest.approx(ref.score, rel=1e-9)


def test_perfect_bleu_is_100():
    assert corpus_bleu(["a b c d e"], [["a b c d e"]])["bleu"] == pytest.approx(100.0)


def test_cider_d_hand_computed():
    # Two images -> log|I| = log 2; an n-gram in one image's refs has idf log 2,
    # an n-gram in no refs has df 0 -> max(1, 0) -> idf log 2 too.
    refs = [["a b"], ["c d"]]
    # Image 0, exact match: sim_1 = sim_2 = 1, no 3/4-grams -> (1+1)/4*10 = 5.
    # Image 1 "c x": unigram sim = log2^2 / (sqrt2 log2)^2 = 1/2, bigram 0 -> 0.5/4*10.
    out = cider_d(["a b", "c x"], refs)
    assert out["per_image"] == pytest.approx([5.0, 1.25])
    assert out["cider_d"] == pytest.approx(3.125)
    # Clipping + length penalty: "a a b" vs "a b": unigram weights (2,1)l vs (1,1)l,
    # min(2l, l) l + l l = 2 l^2 over sqrt5 l * sqrt2 l; bigram: 1/sqrt2; lengths 2 vs 1 bigrams.
    out = cider_d(["a a b", "c d"], refs)
    expected0 = (2 / math.sqrt(10) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4 * 10
    assert out["per_image"][0] == pytest.approx(expected0)
    assert out["per_image"][1] == pytest.approx(5.0)
    # Tokenisation: case and punctuation are ignored.
    assert cider_d(["A, B!", "c d."], refs)["cider_d"] == pytest.approx(5.0)


def test_cider_d_averages_over_references():
    refs = [["a b", "a c"], ["d e"]]
    # Image 0 hyp "a b": df(a)=1 -> weights log2 everywhere.
    # ref "a b": 5 (as above); ref "a c": unigram 1/2, bigram 0 -> 1.25. Mean -> 3.125.
    assert cider_d(["a b", "d e"], refs)["per_image"] == pytest.approx([3.125, 5.0])


def test_metric_input_errors():
    with pytest.raises(CaptionMetricError, match="2 hypotheses but 1"):
        corpus_bleu(["a", "b"], [["a"]])
    with pytest.raises(CaptionMetricError, match="non-empty"):
        cider_d(["a"], [[]])
