"""What a model needs to know about a dataset: ``DatasetInfo`` and ``ModalityInfo``."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple


@dataclasses.dataclass
class ModalityInfo:
    kind: str
    shape: Tuple[int, ...]  # per example, as the batch carries it
    dtype: str
    sequence: bool  # has a token_mask


@dataclasses.dataclass
class DatasetInfo:
    """Classes, per-modality shapes, split sizes and content hashes of a data config's dataset."""

    name: str
    num_classes: int
    class_names: List[str]
    modalities: Dict[str, ModalityInfo]
    splits: Dict[str, int]
    hashes: Dict[str, str]  # split -> content sha256 (builders that record one)
    label_kind: str = "class"
    # split -> {reason: count, "examples", "kept", "policy"}: the examples this process has read so far.
    bad_examples: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    data_dir: str = ""  # where the prepared dataset lives
    sample_rate: int = 0  # of the audio features, from the dataset's metadata (0: not recorded)
    # image modality -> (mean, std) per channel: batches carry uint8 images, normalised where they land
    image_norms: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # vector modality -> {"mean": [D], "std": [D]}: the z-scoring the batches carry (``standardize``)
    standardize: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "DatasetInfo":
        d = dict(d)
        d["modalities"] = {k: ModalityInfo(**{**v, "shape": tuple(v["shape"])}) for k, v in d["modalities"].items()}
        return cls(**d)
