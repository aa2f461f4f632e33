"""Video clips go through preprocess as the pipeline's batches carry them: uint8, normalised like images."""
import numpy as np
import pytest

from mmjax.data.normalize import normalize_images
from mmjax.inference.inputs import InputError, specs_from_record, to_batch

INFO = {"modalities": {"video": {"kind": "video", "shape": (4, 8, 8, 1), "dtype": "uint8", "sequence": False},
                       "audio": {"kind": "audio", "shape": (80,), "dtype": "float32", "sequence": True}},
        "image_norms": {"video": [[0.09], [0.145]]}, "sample_rate": 8000}


def test_a_uint8_clip_is_normalised_with_the_recorded_norms(tmp_path):
    specs = specs_from_record({}, INFO, ["video", "audio"])
    assert specs["video"].dtype == "uint8" and specs["video"].norm == ((0.09,), (0.145,))
    clip = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "clip.npy", clip)
    batch, _ = to_batch(specs, {"video": str(tmp_path / "clip.npy")})
    out = normalize_images(batch, {"video": specs["video"].norm})["inputs"]["video"]
    np.testing.assert_allclose(out[0], (clip / 255.0 - 0.09) / 0.145, rtol=1e-6, atol=1e-6)
    assert batch["modality_mask"]["video"].tolist() == [True] and batch["modality_mask"]["audio"].tolist() == [False]
    with pytest.raises(InputError, match="modality 'video'.*expected shape"):
        to_batch(specs, {"video": clip[:2]})
