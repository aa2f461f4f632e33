"""Which split selects the model: ``config.eval_split``, held out of train when the dataset has none.

Train-time evals and the "best" checkpoint use ``eval_split`` (``"validation"``
by default) so that ``test_split`` stays held out and is reported once. A
dataset without that split (stamps, features3: train and test only) selects
on the last :data:`HELD_OUT_PERCENT` % of its train split (at least one
example; slices by example index, so they are exact), and trains on the rest;
the run's log says so.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Tuple

from mmjax import errors
from mmjax.train.config_access import get as _get

HELD_OUT_PERCENT = 10
_PLAIN_OR_HEAD = re.compile(r"^(?P<base>[A-Za-z_]\w*)(\[:(?P<end>\d+)%\])?$")


class SelectionSplitError(errors.ConfigError):
    """The config's selection split is not in the dataset and cannot be held out of its train split."""


def resolve(config: Any, info: Mapping[str, Any]) -> Tuple[Any, Optional[str]]:
    """``config`` with train/eval splits the dataset has, and a line saying what was held out (or None).

    ``info["splits"]`` lists the dataset's splits (absent: nothing to check,
    ``config`` comes back as it is). The config passed in is not modified.
    """
    splits = info.get("splits") or {}
    eval_split = str(_get(config, "eval_split", "test"))
    if not splits or _base(eval_split) in splits:
        return config, None
    train_split = str(_get(config, "train_split", "train"))
    m = _PLAIN_OR_HEAD.match(train_split)
    end = int(m.group("end") or 100) if m else None
    if m is None or m.group("base") not in splits:
        raise SelectionSplitError(
            f"eval_split {eval_split!r} is not a split of {info.get('name', 'the dataset')} (splits: "
            f"{', '.join(sorted(splits))}) and train_split {train_split!r} is not 'NAME' or 'NAME[:N%]' to "
            "hold it out of; set --config.eval_split to one of its splits")
    base = m.group("base")
    n = int(splits[base])
    held_n = max(1, int(round(n * HELD_OUT_PERCENT / 100)))  # at least one example, also on tiny datasets
    if n - held_n < 1:
        raise SelectionSplitError(f"{base} of {info.get('name', 'the dataset')} has {n} example(s): too few to hold "
                                  "a validation slice out of; set --config.eval_split to one of its splits")
    head = n if m.group("end") is None else int(round(n * end / 100))
    held = f"{base}[{n - held_n}:]"
    train = f"{base}[:{min(head, n - held_n)}]"
    out = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else dict(config)
    out["eval_split"], out["train_split"] = held, train
    note = (f"{info.get('name', 'the dataset')} has no {eval_split!r} split: selecting the model on {held} "
            f"(held out) and training on {train}")
    return out, note


def _base(split: str) -> str:
    return re.split(r"[\[+]", split)[0]
