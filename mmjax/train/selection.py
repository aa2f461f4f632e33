"""Which split selects the model: ``config.eval_split``, held out of train when the dataset has none.

Train-time evals and the "best" checkpoint use ``eval_split`` (``"validation"``
by default) so that ``test_split`` stays held out and is reported once. A
dataset without that split (stamps, features3: train and test only) selects
on the last :data:`HELD_OUT_PERCENT` % of its train split (at least one
example; slices by example index, so they are exact), and trains on the rest;
the run's log says so. A config that names no ``test_split`` on a dataset
without the default one (``"test"``) reports no test split, and says so.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Tuple

from mmjax import errors
from mmjax.train.config_access import copy_with, get as _get, setting

HELD_OUT_PERCENT = 10
_PLAIN_OR_HEAD = re.compile(r"^(?P<base>[A-Za-z_]\w*)(\[:(?P<end>\d+)%\])?$")


class SelectionSplitError(errors.ConfigError):
    """The config's selection split is not in the dataset and cannot be held out of its train split."""


def resolve(config: Any, info: Mapping[str, Any]) -> Tuple[Any, Optional[str]]:
    """``config`` with train/eval/test splits the dataset has, and a line saying what changed (or None).

    ``info["splits"]`` lists the dataset's splits (absent: nothing to check,
    ``config`` comes back as it is). A config that does not name a ``test_split``
    reports none when the dataset lacks the default one. The config passed in is
    not modified.
    """
    splits = info.get("splits") or {}
    if not splits:
        return config, None
    name = info.get("name", "the dataset")
    updates, notes = {}, []
    eval_split = str(setting(config, "eval_split"))
    if _base(eval_split) not in splits:
        held, train = _held_out(config, splits, name, eval_split)
        updates.update(eval_split=held, train_split=train)
        notes.append(f"{name} has no {eval_split!r} split: selecting the model on {held} (held out) "
                     f"and training on {train}")
    test_split = str(setting(config, "test_split"))
    if _get(config, "test_split") is None and test_split and _base(test_split) not in splits:
        updates["test_split"] = ""
        notes.append(f"{name} has no {test_split!r} split: no test evaluation (set --config.test_split)")
    if not updates:
        return config, None
    return copy_with(config, **updates), "; ".join(notes)


def _held_out(config: Any, splits: Mapping[str, int], name: str, eval_split: str) -> Tuple[str, str]:
    """-> (eval split, train split): the last HELD_OUT_PERCENT % of train, and the rest of it."""
    train_split = str(setting(config, "train_split"))
    m = _PLAIN_OR_HEAD.match(train_split)
    if m is None or m.group("base") not in splits:
        raise SelectionSplitError(
            f"eval_split {eval_split!r} is not a split of {name} (splits: "
            f"{', '.join(sorted(splits))}) and train_split {train_split!r} is not 'NAME' or 'NAME[:N%]' to "
            "hold it out of; set --config.eval_split to one of its splits")
    base = m.group("base")
    n = int(splits[base])
    held_n = max(1, int(round(n * HELD_OUT_PERCENT / 100)))  # at least one example, also on tiny datasets
    if n - held_n < 1:
        raise SelectionSplitError(f"{base} of {name} has {n} example(s): too few to hold "
                                  "a validation slice out of; set --config.eval_split to one of its splits")
    head = n if m.group("end") is None else int(round(n * int(m.group("end")) / 100))
    return f"{base}[{n - held_n}:]", f"{base}[:{min(head, n - held_n)}]"


def _base(split: str) -> str:
    return re.split(r"[\[+]", split)[0]
