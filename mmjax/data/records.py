"""Serialized tfds examples -> only the features a config reads, without tfds's generic parser.

tfds's numpy deserialization walks every feature of an example through a
generic, pure-Python converter (about 80 µs per av_digits example, most of a
batch's read time). A config reads a few features (its modalities, their
``present`` flags, the label), so :class:`FeatureParser` parses the
``tf.train.Example`` protobuf (tfds's own copy of the proto, no tensorflow) and
converts just those, then hands each value to the feature's own
``decode_example_np``, so the result is what tfds returns.

It covers tfds's Tensor, ClassLabel, Scalar, Text and Image features in their
flat serialized layouts (one key per feature, or the ``shape``/``value`` pair of
a dynamic-shape tensor); any other feature (sequences, audio, ragged values) makes :func:`make_parser` return
None and the reader keeps tfds's own path. :func:`make_parser` also checks its
output against tfds's on a real example before it is used.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

_Convert = Callable[[Any], Any]


def _tensor_info_type():
    from tensorflow_datasets.core.features import feature as feature_lib

    return feature_lib.TensorInfo


def _proto_values(feature) -> Sequence[Any]:
    kind = feature.WhichOneof("kind")
    if kind is None:
        return ()
    return getattr(feature, kind).value


def _from_proto(info) -> Optional[_Convert]:
    """A converter of one serialized key (a ``tf.train.Feature``) -> the numpy tfds parses it to."""
    shape = tuple(info.shape)
    if sum(d is None for d in shape) > 1:
        return None  # ragged: tfds stores row lengths under extra keys
    dtype = np.dtype(info.np_dtype) if info.np_dtype is not None else np.dtype(object)
    if not shape:
        return lambda feature: np.array(_proto_values(feature), dtype=dtype).item()
    target = [-1 if d is None else d for d in shape]
    return lambda feature: np.array(_proto_values(feature), dtype=dtype).reshape(target)


def _covered(feature) -> bool:
    # Exact types: a subclass (Audio, Video) may store or decode differently.
    import tensorflow_datasets as tfds

    f = tfds.features
    return type(feature) in (f.Tensor, f.ClassLabel, f.Scalar, f.Text, f.Image)


def _plan(feature, path: str) -> Optional[List[Tuple[str, str, _Convert]]]:
    """(serialized key, sub-key or "", converter) for each key ``feature`` is stored under."""
    if not _covered(feature):
        return None
    info = feature.get_serialized_info()
    tensor_info = _tensor_info_type()
    if isinstance(info, tensor_info):
        convert = _from_proto(info)
        return None if convert is None else [(path, "", convert)]
    if isinstance(info, Mapping) and all(isinstance(v, tensor_info) for v in info.values()):
        plan = []
        for sub, sub_info in info.items():  # a dynamic-shape tensor: {"shape": ..., "value": ...}
            convert = _from_proto(sub_info)
            if convert is None:
                return None
            plan.append((f"{path}/{sub}", sub, convert))
        return plan
    return None


class FeatureParser:
    """``parser(record) -> {feature path nested by "/": decoded value}`` for the paths asked for.

    ``keep_encoded``: paths whose stored value is returned undecoded (the encoded image bytes)."""

    def __init__(self, features, paths: Sequence[str], keep_encoded: Sequence[str], plans):
        from tensorflow_datasets.core.example_parser import tf_example_pb2

        self._parse = tf_example_pb2.Example.FromString
        self._steps = []
        for path, plan in zip(paths, plans):
            decode = None if path in keep_encoded else _feature_at(features, path).decode_example_np
            self._steps.append((path.split("/"), plan, decode))

    def __call__(self, record: bytes) -> Dict[str, Any]:
        stored = self._parse(record).features.feature
        out: Dict[str, Any] = {}
        for parts, plan, decode in self._steps:
            if len(plan) == 1 and not plan[0][1]:
                key, _, convert = plan[0]
                value = convert(stored[key])
            else:
                value = {sub: convert(stored[key]) for key, sub, convert in plan}
            node = out
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value if decode is None else decode(value)
        return out


def _feature_at(features, path: str):
    for part in path.split("/"):
        features = features[part]
    return features


def make_parser(features, paths: Sequence[str], keep_encoded: Sequence[str],
                reference: Callable[[bytes], Mapping[str, Any]], sample: Optional[bytes]) -> Optional[FeatureParser]:
    """A :class:`FeatureParser` for ``paths``, or None when one of them has a layout it does not
    cover or when its output on ``sample`` (a stored record) differs from ``reference(sample)``
    (tfds's own deserialization) in any value, shape or dtype."""
    paths = sorted(set(paths))
    try:
        plans = [_plan(_feature_at(features, p), p) for p in paths]
    except (KeyError, TypeError, AttributeError):
        return None
    if any(p is None for p in plans):
        return None
    parser = FeatureParser(features, paths, keep_encoded, plans)
    if sample is not None:
        try:
            ours, theirs = parser(sample), reference(sample)
        except Exception:  # a record it cannot parse: leave every record to tfds
            return None
        if not all(_same(_feature_at(ours, p), _feature_at(theirs, p)) for p in paths):
            return None
    return parser


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    return type(a) is type(b) and a == b


def _needed_features(cfg) -> List[str]:
    paths = [mc.feature for mc in cfg.modalities.values()]
    paths += [mc.present for mc in cfg.modalities.values() if mc.get("present")]
    return paths + ([cfg.label] if cfg.label else [])


def for_split(cfg, b, split: str):
    """(raw record source, :class:`FeatureParser`) of builder ``b``'s ``split`` for the features ``cfg`` reads,
    or None where tfds's own deserialization must do."""
    import tensorflow_datasets as tfds

    try:
        records = b.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        sample = records[0] if len(records) else None
    except Exception:  # read errors surface, named, at the first read
        return None
    features = b.info.features
    images = [mc.feature for mc in cfg.modalities.values() if mc.kind == "image"]
    needed = _needed_features(cfg)
    # The check compares the needed features only: tfds need not decode an image nobody reads.
    reference_decoders = _skip_decoding(features, tfds, keep={p for p in needed if p not in images}) or None
    parser = make_parser(features, needed, images,
                         lambda r: features.deserialize_example_np(r, decoders=reference_decoders), sample)
    return None if parser is None else (records, parser)


def _skip_decoding(features, tfds, keep, prefix: str = "") -> Dict[str, Any]:
    """SkipDecoding for every Image feature below ``features`` whose path is not in ``keep``."""
    out: Dict[str, Any] = {}
    for key in features.keys():
        f, path = features[key], prefix + key
        if isinstance(f, tfds.features.Image) and path not in keep:
            out[key] = tfds.decode.SkipDecoding()
        elif isinstance(f, tfds.features.FeaturesDict):
            sub = _skip_decoding(f, tfds, keep, path + "/")
            if sub:
                out[key] = sub
    return out
