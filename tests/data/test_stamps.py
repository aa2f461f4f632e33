"""The stamps parser on a small tree laid out like tuxpaint-stamps-default, and the real build if installed."""
import os

import numpy as np
import pytest

from mmjax.data import DataConfigError
from mmjax.data.builders import stamps_gen as gen


def _tree(root):
    from PIL import Image
    import soundfile as sf

    def stamp(rel, desc_lines, speech_langs=(), sound=False, image_size=(20, 10)):
        d = os.path.join(root, os.path.dirname(rel))
        os.makedirs(d, exist_ok=True)
        stem = os.path.join(root, rel)
        Image.new("RGBA", image_size, (255, 0, 0, 255)).save(stem + ".png")
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write("\n".join(desc_lines) + "\n")
        t = np.arange(22050) / 22050.0
        for lang in speech_langs:
            name = stem + ("_desc.ogg" if lang == "en" else f"_desc_{lang}.ogg")
            sf.write(name, 0.5 * np.sin(2 * np.pi * 440 * t), 22050, format="OGG")
        if sound:
            sf.write(stem + ".ogg", 0.5 * np.sin(2 * np.pi * 220 * t[:11025]), 22050, format="OGG")

    stamp("animals/birds/robin", ["A robin.", "fr.utf8=Un rouge-gorge.", "es.utf8=Un petirrojo."], ("fr", "en"), sound=True)
    stamp("food/fruit/apple", ["An apple.", "fr.utf8=Une pomme."], ("es",))
    stamp("food/fruit/pear", ["A pear."], ())
    os.makedirs(os.path.join(root, "notacategory"), exist_ok=True)
    with open(os.path.join(root, "food", "fruit", "banana.svg"), "w") as f:
        f.write("<svg/>")


def test_scan_and_load(tmp_path):
    _tree(str(tmp_path))
    fr = gen.scan(str(tmp_path), "fr")
    assert [s.stem for s in fr] == ["animals/birds/robin", "food/fruit/apple"]  # pear has no French text
    robin, apple = fr
    assert robin.category == "animals" and robin.fine == "animals/birds" and robin.description == "Un rouge-gorge."
    assert robin.speech.endswith("robin_desc_fr.ogg") and robin.sound.endswith("robin.ogg")
    assert apple.speech is None and apple.sound is None
    en = gen.scan(str(tmp_path), "en")
    assert [s.description for s in en] == ["A robin.", "An apple.", "A pear."]
    assert en[0].speech.endswith("robin_desc.ogg")

    ex = gen.example(robin, 0)
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    # 20x10 red on white, scaled to 64x32 and centred: red rows in the middle, white above.
    assert (ex["image"][32, 32] == [255, 0, 0]).all() and (ex["image"][2, 32] == [255, 255, 255]).all()
    assert ex["speech"].dtype == np.int16 and abs(ex["speech"].size - 8000) < 100  # 1 s at 8 kHz
    assert abs(ex["sound"].size - 4000) < 100
    assert gen.example(apple, 1)["speech"].size == 0
    assert {s.split for s in en} <= {"train", "test"}
    assert gen.fine_names(en) == ["animals/birds", "food/fruit"]


def test_missing_root_names_the_package(tmp_path):
    with pytest.raises(DataConfigError, match="apt-get install tuxpaint-stamps-default"):
        gen.scan(str(tmp_path / "nope"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(gen.DEFAULT_ROOT), reason="tuxpaint-stamps-default is not installed")
def test_real_stamps_tree():
    stamps = gen.scan(gen.DEFAULT_ROOT, "fr")
    assert len(stamps) > 500
    assert {s.category for s in stamps} == set(gen.CATEGORIES)
    assert sum(s.speech is not None for s in stamps) > 0.8 * len(stamps)
    ex = gen.example(stamps[0], 0)
    assert ex["image"].shape == (64, 64, 3) and 0 < ex["speech"].size <= gen.SPEECH_SAMPLES
