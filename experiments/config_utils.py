"""Loading experiment configs and applying ``--config.KEY=VALUE`` overrides.

An experiment is a name (a file ``experiments/configs/<name>.py``) or a path
to a Python file, either way defining ``get_config() -> ConfigDict``.
Overrides are type-cast to the type of the value they replace; an unknown key
is a :class:`UserError` naming it and the closest existing key.
"""
from __future__ import annotations

import ast
import copy
import difflib
import importlib
import importlib.util
import os
from typing import Any, Iterable, List, Sequence, Tuple

import ml_collections

from experiments.errors import UserError
from mmjax.train.defaults import default

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
NOT_EXPERIMENTS = {"__init__", "base"}


def experiment_names() -> List[str]:
    """Names of the experiments in experiments/configs/."""
    return sorted(
        f[:-3] for f in os.listdir(CONFIG_DIR)
        if f.endswith(".py") and f[:-3] not in NOT_EXPERIMENTS
    )


def load_config(experiment: str) -> ml_collections.ConfigDict:
    """An experiment name or a path to a config file -> its ConfigDict."""
    if experiment.endswith(".py") or os.sep in experiment:
        if not os.path.isfile(experiment):
            raise UserError(f"config file {experiment!r} does not exist")
        spec = importlib.util.spec_from_file_location("_experiment_config", experiment)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a broken user file: report it in one line
            raise UserError(f"config file {experiment!r} failed to load: {type(e).__name__}: {e}") from None
    else:
        names = experiment_names()
        if experiment not in names:
            close = difflib.get_close_matches(experiment, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(f"unknown experiment {experiment!r}.{hint} Known: {', '.join(names)}")
        module = importlib.import_module(f"experiments.configs.{experiment}")
    if not hasattr(module, "get_config"):
        raise UserError(f"config {experiment!r} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"config {experiment!r}: get_config() must return an ml_collections.ConfigDict")
    return add_defaults(config)


# Keys every training config has (configs/base.py sets them), added to configs that do
# not start from base.py or were written before the keys existed (so
# ``--config.train.check_finite=off`` is a known key everywhere).
# train.validate_batches / check_finite: every | first | off (batch structure; NaN/Inf in the inputs),
# with the library's own defaults (mmjax.train.defaults).
DEFAULTS = {"train": {k: default(f"train.{k}") for k in ("validate_batches", "check_finite")}}


def add_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fills in :data:`DEFAULTS` keys that ``config`` lacks (existing values win)."""
    for section, values in DEFAULTS.items():
        if section not in config:
            continue  # not a training config (e.g. a data-only one)
        node = config[section]
        for key, value in values.items():
            if key not in node:
                node[key] = value
    return config


def flat_keys(config: Any, prefix: str = "") -> List[str]:
    """All dotted keys of a (nested) ConfigDict, inner nodes included."""
    out = []
    for k in config.keys():
        key = f"{prefix}{k}"
        out.append(key)
        v = config[k]
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.extend(flat_keys(v, key + "."))
    return out


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cast_value(key: str, text: str, current: Any) -> Any:
    """``text`` parsed as the type of ``current`` (bool, int, float, str, tuple/list, dict, None).

    The literal ``None`` sets any key to None.
    """
    def bad(kind):
        return UserError(f"--config.{key}: cannot read {text!r} as {kind}")
    if text.strip() == "None":
        # Keys documented as "None | ..." (e.g. data.class_weights) must be resettable.
        return None
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise bad("a bool (true/false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            value = _literal(text)
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad("an int") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise bad("a float") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        value = _literal(text)
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(_like_elements(key, value, current))
    if isinstance(current, (dict, ml_collections.ConfigDict)):
        value = _literal(text)
        if not isinstance(value, dict):
            raise bad("a dict literal like {'data': -1}")
        return value
    return _literal(text)


def _like_elements(key: str, values: Sequence[Any], current: Sequence[Any]) -> List[Any]:
    """Items of a sequence override cast to the type the current items share (numbers stay numbers)."""
    kinds = {type(v) for v in current}
    if len(kinds) != 1 or not kinds <= {int, float}:
        return list(values)
    kind = kinds.pop()
    out = []
    for v in values:
        parsed = _literal(v.strip()) if isinstance(v, str) else v
        ok = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
        if ok and kind is int and isinstance(parsed, float):
            ok = parsed.is_integer()
        x = kind(parsed) if ok else None
        if x is None:
            raise UserError(f"--config.{key}: item {v!r} is not {'an int' if kind is int else 'a number'} "
                            f"(the current value is {tuple(current)!r})")
        out.append(x)
    return out


def parse_override_args(argv: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Splits ``--config.KEY=VALUE`` / ``--config.KEY VALUE`` tokens from the other arguments."""
    overrides, rest = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--config."):
            body = tok[len("--config."):]
            if "=" in body:
                key, value = body.split("=", 1)
            else:
                if i + 1 >= len(argv):
                    raise UserError(f"{tok} needs a value (--config.KEY=VALUE)")
                key, value = body, argv[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(tok)
        i += 1
    return overrides, rest


def _fusion_options(name: str) -> List[str]:
    """The options a fusion block takes (its dataclass fields), for keys added under model.fusion_config."""
    import mmjax.fusion  # noqa: F401  (registers the blocks)
    from mmjax.fusion.registry import FUSION

    if name not in FUSION:
        return []
    fields = getattr(FUSION.get(name), "__dataclass_fields__", {})
    return sorted(f for f in fields if f not in ("parent", "name"))


def _add_fusion_option(config: ml_collections.ConfigDict, key: str, text: str) -> bool:
    """``model.fusion_config.OPT`` that the config lacks: added when the block built takes OPT."""
    parts = key.split(".")
    if len(parts) != 3 or parts[:2] != ["model", "fusion_config"] or parts[2] in config.model.fusion_config:
        return False
    fusion = config.model.get("fusion")
    options = _fusion_options(fusion)
    if parts[2] not in options:
        close = difflib.get_close_matches(parts[2], options, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"--config.{key}: fusion block {fusion!r} has no option {parts[2]!r}.{hint} "
                        f"Its options: {', '.join(options)}")
    with config.model.fusion_config.ignore_type():
        config.model.fusion_config[parts[2]] = _literal(text)
    return True


def _bring_fusion_config(config: ml_collections.ConfigDict) -> None:
    """``model.fusion`` chosen on the command line brings that block's ``fusion_configs`` entry."""
    per_fusion = config.get("fusion_configs") or {}
    fusion = config.model.get("fusion")
    if fusion in per_fusion:
        with config.model.ignore_type():
            config.model.fusion_config = ml_collections.ConfigDict(copy.deepcopy(per_fusion[fusion].to_dict()))


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[Tuple[str, str]]) -> ml_collections.ConfigDict:
    """Sets each dotted ``key`` to ``value`` cast to the existing type. Unknown keys are errors.

    ``model.fusion`` is applied first and brings ``fusion_configs[fusion]`` (the options the
    experiment keeps for that block, as ``sweep`` uses them); ``model.fusion_config.OPT`` keys
    then refine it, and may add an option the block takes that the config does not list.
    """
    overrides = list(overrides)
    fusion_first = [o for o in overrides if o[0] == "model.fusion"] + [o for o in overrides if o[0] != "model.fusion"]
    keys = flat_keys(config)
    for key, text in fusion_first:
        if "model" in config and "fusion_config" in config.model and _add_fusion_option(config, key, text):
            continue
        parts = key.split(".")
        node = config
        for j, p in enumerate(parts):
            container_ok = isinstance(node, (ml_collections.ConfigDict, dict)) and p in node
            if not container_ok:
                close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise UserError(f"unknown config key {key!r}.{hint}")
            if j < len(parts) - 1:
                node = node[p]
        current = node[parts[-1]]
        value = cast_value(key, text, current)
        try:
            if isinstance(value, dict) and isinstance(current, ml_collections.ConfigDict):
                value = ml_collections.ConfigDict(value)
            if isinstance(node, ml_collections.ConfigDict):
                with node.ignore_type():
                    node[parts[-1]] = value
            else:
                node[parts[-1]] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"--config.{key}: {e}") from None
        if key == "model.fusion":
            _bring_fusion_config(config)
    return config
