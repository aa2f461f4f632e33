"""Two-tower zero-shot / retrieval on converted CLIP and SigLIP against transformers (tiny random checkpoints).

The directory holds a tiny word-level tokenizer.json and an image processor, so
the whole user path runs: uint8 images and class-name prompts -> preprocess ->
towers -> logits, compared with the transformers processor + model's
``logits_per_image`` (max relative error 1e-5 in float32).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from mmjax.encoders.hf import dual_encoder  # noqa: E402
from mmjax.encoders.hf.dual import dual_towers  # noqa: E402
from mmjax.models import retrieval  # noqa: E402

TOL = 1e-5
CLASSES = ["cat", "dog", "car", "bird", "tree"]
WORDS = ["a", "photo", "of", "the", *CLASSES]
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=8)
TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=16, pad_token_id=1, bos_token_id=97, eos_token_id=98)


def _tokenizer(path, eos: bool):
    """A word-level tokenizer.json: <pad>=1, <bos>=97, <eos>=98 (CLIP ends each text with <eos>)."""
    vocab = {"<pad>": 1, "<unk>": 0, "<bos>": 97, "<eos>": 98, **{w: 3 + i for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    if eos:
        tok.post_processor = tokenizers.processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", 97), ("<eos>", 98)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))


def _checkpoint(path, kind):
    """(model, image processor, tokenizer) of a tiny random two-tower checkpoint saved in ``path``."""
    torch.manual_seed(0)
    if kind == "clip":
        cfg = transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=24,
                                      logit_scale_init_value=2.0)
        model = transformers.CLIPModel(cfg)
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION, text_config=TEXT))
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    with torch.no_grad():
        for w in model.parameters():  # the init's near-constant embeddings would all pick one class
            w.add_(0.3 * torch.randn_like(w))
        model.logit_scale.fill_(1.7)  # values no init gives: a wrong mapping of scale or bias shows
        if kind == "siglip":
            model.logit_bias.fill_(-0.6)
    model.eval().save_pretrained(str(path))
    proc.save_pretrained(str(path))
    return model, proc, _tokenizer(path, eos=kind == "clip")


def _images(n=8):
    """Plain colours with some noise: unlike pure noise, they do not all land on one class."""
    rng = np.random.default_rng(0)
    return [np.clip(rng.integers(0, 256, 3) + rng.integers(-20, 21, (40, 48, 3)), 0, 255).astype(np.uint8)
            for _ in range(n)]


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_logits_and_predictions_match_transformers(tmp_path, kind):
    model, proc, tok = _checkpoint(tmp_path, kind)
    images = _images()
    prompts = [f"a photo of the {c}" for c in CLASSES]
    # The reference: transformers' processor and model on the same raw inputs.
    pixel_ref = proc(images=images, return_tensors="pt")["pixel_values"]
    text_ref = tok(prompts, padding="max_length", max_length=16, return_tensors="pt")
    kwargs = {"attention_mask": text_ref["attention_mask"]} if kind == "clip" else {}  # SigLIP: no mask
    with torch.no_grad():
        ref = model(input_ids=text_ref["input_ids"], pixel_values=pixel_ref, **kwargs).logits_per_image.numpy()

    dual, variables, prep = dual_encoder(str(tmp_path))
    assert dual.loss == kind and dual.project is False
    ids, mask = prep["text"](prompts)
    np.testing.assert_array_equal(ids, text_ref["input_ids"].numpy())
    pixels = prep["image"](np.stack(images))
    # jitted: op by op, the towers take seconds
    img = jax.jit(lambda v, x: dual.apply(v, "image", x, method="embed"))(variables, pixels)
    txt = jax.jit(lambda v, i, m: dual.apply(v, "text", i, m, method="embed"))(variables, ids, mask)
    logits = dual.apply(variables, "image", "text", img, txt, method="logits")
    assert logits.shape == (len(images), len(CLASSES))
    assert rel(logits, ref) < TOL
    # Zero-shot: the library's prompt classifier picks what the reference's logits pick.
    pred = retrieval.zero_shot_predict(img, txt[:, None, :])
    np.testing.assert_array_equal(np.asarray(pred), ref.argmax(axis=1))
    assert len(set(ref.argmax(axis=1).tolist())) >= 2  # the predictions differ between images
    # The logit params come from the checkpoint (set to values no init gives).
    pair = variables["params"]["pair_logits_image_text"]
    assert float(pair["log_scale"]) == pytest.approx(1.7)
    if kind == "siglip":
        assert float(pair["bias"]) == pytest.approx(-0.6)


def test_config_path_loads_the_same_model_through_init_from(tmp_path):
    from experiments.configs import synthetic_contrastive
    from mmjax.train import builder, init_from

    _checkpoint(tmp_path, "siglip")
    c = synthetic_contrastive.get_config()
    c.model.towers = dual_towers(str(tmp_path))
    c.model.loss, c.model.project = "siglip", False
    c.parallel.mode = "single"
    batch = {"inputs": {"image": np.zeros((2, 32, 32, 3), np.float32), "text": np.ones((2, 16), np.int32)},
             "token_mask": {"text": np.ones((2, 16), bool)}, "label": np.zeros(2, np.int32)}
    runner = builder.build(c, 5)
    state = runner.create_state(batch, jax.random.PRNGKey(0))
    said = []
    state = init_from.apply_init_from(runner, state, {"pretrained": str(tmp_path)}, say=said.append)
    got = runner.host_state(state).params
    _, want, _ = dual_encoder(str(tmp_path))
    assert jax.tree.structure(got) == jax.tree.structure(want["params"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want["params"])
    assert "pair_logits_image_text" in said[0]


def test_a_single_tower_directory_is_not_a_dual_encoder(tmp_path):
    from mmjax.encoders.hf import HFCheckpointError

    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(**VISION)).save_pretrained(str(tmp_path))
    with pytest.raises(HFCheckpointError, match="two-tower CLIP or SigLIP"):
        dual_encoder(str(tmp_path))


def test_contrastive_eval_prompts_use_the_checkpoint_tokenizer(tmp_path):
    """With data.modalities.text.tokenizer set, the task's zero-shot class prompts are the ids the
    checkpoint's tokenizer gives (not the byte tokenizer's), so their embeddings are dual_encoder's."""
    from experiments.configs import synthetic_contrastive
    from mmjax.train import builder, init_from, tasks

    _checkpoint(tmp_path, "clip")
    c = synthetic_contrastive.get_config()
    c.model.towers = dual_towers(str(tmp_path))
    c.model.loss, c.model.project = "clip", False
    c.parallel.mode = "single"
    c.data.modalities = {"text": {"kind": "text", "tokenizer": str(tmp_path), "max_len": 16}}
    batch = {"inputs": {"image": np.zeros((2, 32, 32, 3), np.float32), "text": np.ones((2, 16), np.int32)},
             "token_mask": {"text": np.ones((2, 16), bool)}, "label": np.zeros(2, np.int32)}
    runner = builder.build(c, 5)
    state = init_from.apply_init_from(runner, runner.create_state(batch, jax.random.PRNGKey(0)),
                                      {"pretrained": str(tmp_path)}, say=lambda _: None)
    task = tasks.get_task(c, {"class_names": CLASSES, "tokenizer": None})
    got = task.class_prompt_embeddings(runner, state)  # (C, P, E), the config's prompt "a {}"
    dual, variables, prep = dual_encoder(str(tmp_path))
    ids, mask = prep["text"]([f"a {name}" for name in CLASSES])
    want = jax.jit(lambda v, i, m: dual.apply(v, "text", i, m, method="embed"))(variables, ids, mask)
    assert got.shape == (len(CLASSES), 1, want.shape[-1])
    np.testing.assert_allclose(got[:, 0], np.asarray(want), rtol=1e-5, atol=1e-6)
