"""The explanation plots write PNGs for images, audio, vectors, contributions and attention."""
import numpy as np
from PIL import Image

from experiments.reports import explain_plots


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_every_plot_writes_a_png(tmp_path):
    rng = np.random.RandomState(0)
    paths = [
        explain_plots.contributions_plot({"image": 0.3, "audio": -0.1}, str(tmp_path / "c.png"), "t", 0.1, 0.3),
        explain_plots.image_saliency_plot(rng.randn(8, 8, 1), rng.randn(8, 8, 1), str(tmp_path / "i.png")),
        explain_plots.image_saliency_plot(rng.rand(8, 8, 3), rng.randn(8, 8, 3), str(tmp_path / "rgb.png")),
        explain_plots.audio_saliency_plot(rng.randn(1000), rng.randn(1000), str(tmp_path / "a.png"), sample_rate=8000),
        explain_plots.vector_saliency_plot(rng.randn(6), str(tmp_path / "v.png")),
        explain_plots.attention_plot(rng.rand(2, 3, 5), str(tmp_path / "w.png"), key_labels=list("abcde")),
    ]
    for p in paths:
        w, h = _size(p)
        assert w > 100 and h > 100, p
