"""Caption metrics: corpus BLEU-4 and CIDEr-D, in plain Python (no JAX).

BLEU follows sacrebleu's defaults exactly: tokenisation ``13a`` (the
mteval-v13a rules: punctuation split off, ``.``/``,`` kept inside numbers),
case-sensitive unless ``lowercase=True``, corpus-level clipped n-gram counts
(each n-gram clipped by its maximum count in any one reference), brevity
penalty against the closest reference length (ties go to the shorter one) and
``exp`` smoothing (the NIST method: the k-th zero precision is replaced by
1 / (2^k * total)). Scores are on sacrebleu's 0-100 scale.

CIDEr-D follows Vedantam et al. (2015) as implemented in the reference COCO
caption evaluation code:

* tokenisation: lowercase, punctuation removed, split on whitespace (an
  approximation of the PTB tokeniser the COCO code runs in Java);
* n = 1..4; each caption is a TF-IDF vector per n with weight
  ``tf(g) * (log |I| - log max(1, df(g)))`` where ``|I|`` is the number of images
  in the evaluated corpus and ``df(g)`` counts the images whose *references*
  contain g. The IDF source is therefore the reference set being scored
  (as in the COCO code), not an external corpus, so a score depends on the
  whole evaluated set;
* similarity per n: ``sum_g min(h_g, r_g) r_g / (|h| |r|)`` (the "-D" clipping of
  hypothesis weights by the reference's), times the Gaussian length penalty
  ``exp(-(l_h - l_r)^2 / (2 sigma^2))`` with sigma = 6, where lengths are
  counted as in the COCO code (number of bigrams, i.e. tokens - 1);
* per image: mean over n, mean over references, times 10; corpus score: mean
  over images.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, List, Mapping, Sequence, Tuple

from mmjax import errors

MAX_ORDER = 4


class CaptionMetricError(errors.InputError):
    """Bad input to a caption metric (mismatched lengths, empty reference sets)."""


# --- tokenisation ------------------------------------------------------------

_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def tokenize_13a(line: str) -> List[str]:
    """mteval-v13a tokenisation (sacrebleu's default) -> list of tokens."""
    line = line.rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (
            line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        )
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


_PUNCT = re.compile(r"[^\w\s]")


def tokenize_cider(line: str) -> List[str]:
    """Lowercase, drop punctuation, split on whitespace."""
    return _PUNCT.sub(" ", line.lower()).split()


def _ngrams(tokens: Sequence[str], max_order: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]], metric: str) -> None:
    if isinstance(hypotheses, str):
        raise CaptionMetricError(f"{metric}: hypotheses must be a list of strings, not one string")
    if len(hypotheses) != len(references):
        raise CaptionMetricError(
            f"{metric}: {len(hypotheses)} hypotheses but {len(references)} reference sets"
        )
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise CaptionMetricError(
                f"{metric}: references[{i}] must be a non-empty list of strings, got {refs!r}"
            )


# --- BLEU --------------------------------------------------------------------


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    lowercase: bool = False,
    smooth: str = "exp",
    max_order: int = MAX_ORDER,
) -> Dict[str, float]:
    """Corpus BLEU, equal to ``sacrebleu.corpus_bleu`` with default settings.

    Args:
      hypotheses: N system captions.
      references: N lists of reference captions (any number per hypothesis).
        Note the layout: one list per *hypothesis* (sacrebleu takes the
        transpose, one stream per reference index).
      lowercase: lowercase before tokenising.
      smooth: "exp" (sacrebleu's default) or "none".

    Returns:
      {"bleu": 0-100, "bp": brevity penalty, "precisions": [p_1..p_4] in %,
       "sys_len", "ref_len"}.
    """
    _check(hypotheses, references, "bleu")
    if smooth not in ("exp", "none"):
        raise CaptionMetricError(f"bleu: smooth must be 'exp' or 'none', got {smooth!r}")
    prep = (lambda s: tokenize_13a(s.lower())) if lowercase else tokenize_13a
    correct = [0] * max_order
    total = [0] * max_order
    sys_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        h = prep(hyp)
        ref_max: Counter = Counter()
        ref_lens = []
        for r in refs:
            rt = prep(r)
            ref_lens.append(len(rt))
            for g, c in _ngrams(rt, max_order).items():
                ref_max[g] = max(ref_max[g], c)
        # Closest reference length; ties go to the shorter reference.
        closest = min(ref_lens, key=lambda L: (abs(len(h) - L), L))
        sys_len += len(h)
        ref_len += closest
        for g, c in _ngrams(h, max_order).items():
            total[len(g) - 1] += c
            correct[len(g) - 1] += min(c, ref_max.get(g, 0))

    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * max_order
    if not any(correct):
        return {"bleu": 0.0, "bp": bp, "precisions": precisions, "sys_len": sys_len, "ref_len": ref_len}
    smooth_factor = 1.0
    for n in range(max_order):
        if total[n] == 0:
            break
        if correct[n] == 0:
            if smooth == "exp":
                smooth_factor *= 2
                precisions[n] = 100.0 / (smooth_factor * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    if min(precisions) <= 0:
        score = 0.0
    else:
        score = bp * math.exp(sum(math.log(p) for p in precisions) / max_order)
    return {"bleu": score, "bp": bp, "precisions": precisions, "sys_len": sys_len, "ref_len": ref_len}


# --- CIDEr-D -----------------------------------------------------------------


def _tfidf(counts: Counter, df: Mapping[Tuple[str, ...], int], log_num_images: float, n: int):
    vec: List[Dict[Tuple[str, ...], float]] = [dict() for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for g, tf in counts.items():
        k = len(g) - 1
        w = tf * (log_num_images - math.log(max(1.0, df.get(g, 0))))
        vec[k][g] = w
        norm[k] += w * w
        if k == 1:
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def cider_d(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    sigma: float = 6.0,
    max_order: int = MAX_ORDER,
) -> Dict[str, object]:
    """Corpus CIDEr-D (see the module docstring for the exact definition).

    Args:
      hypotheses: N captions, one per image.
      references: N non-empty lists of reference captions.

    Returns:
      {"cider_d": corpus score (mean over images), "per_image": [N scores]}.
    """
    _check(hypotheses, references, "cider_d")
    ref_counts = [[_ngrams(tokenize_cider(r), max_order) for r in refs] for refs in references]
    df: Counter = Counter()
    for counts in ref_counts:
        for g in set().union(*counts):
            df[g] += 1
    log_n = math.log(float(len(references)))
    per_image = []
    for hyp, counts in zip(hypotheses, ref_counts):
        vh, nh, lh = _tfidf(_ngrams(tokenize_cider(hyp), max_order), df, log_n, max_order)
        total = 0.0
        for rc in counts:
            vr, nr, lr = _tfidf(rc, df, log_n, max_order)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            sims = []
            for k in range(max_order):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                sims.append(val * penalty)
            total += sum(sims) / max_order
        per_image.append(10.0 * total / len(counts))
    score = sum(per_image) / len(per_image) if per_image else 0.0
    return {"cider_d": score, "per_image": per_image}


__all__ = ["CaptionMetricError", "cider_d", "corpus_bleu", "tokenize_13a", "tokenize_cider"]
