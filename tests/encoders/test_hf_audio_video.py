"""Converted Hugging Face audio and video towers (Whisper's encoder, AST, VideoMAE) against PyTorch.

As in test_hf_towers.py: tiny random models built from configs and saved to a
tmp dir (nothing is downloaded); errors are max |ours - ref| / max |ref| in
float32 and every family meets 1e-5.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmjax.encoders import create  # noqa: E402
from mmjax.encoders.hf import HFCheckpointError, from_transformers, pretrained_variables, towers  # noqa: E402
from mmjax.encoders.hf.weights import read_config  # noqa: E402

TOL = 1e-5
WIDTHS = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def run(enc, variables, x):
    """``enc.apply`` compiled once (op-by-op dispatch of a whole tower is slower on CPU)."""
    return jax.jit(enc.apply)(variables, jnp.asarray(x))


def save(cls, config, path):
    """A random model saved to ``path``: every tensor, zero-initialised ones too (AST's [CLS] and
    distillation tokens, VideoMAE's q / v biases, LayerNorm biases), gets noise so each one matters."""
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(path))
    return model


def whisper_config(max_source_positions=6):
    return transformers.WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=max_source_positions,
        max_target_positions=8, vocab_size=64, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        decoder_start_token_id=2)


def ast_config():
    # Overlapping patches in time (stride 2 < patch 4), as the released checkpoints overlap (10 < 16).
    return transformers.ASTConfig(**WIDTHS, patch_size=4, frequency_stride=4, time_stride=2, max_length=12,
                                  num_mel_bins=8)


def videomae_config(**kw):
    return transformers.VideoMAEConfig(**WIDTHS, image_size=8, patch_size=4, tubelet_size=2, num_frames=4,
                                       num_labels=3, **kw)


@pytest.mark.parametrize("cls", ["WhisperModel", "WhisperForConditionalGeneration"])
def test_whisper_encoder_matches_reference(tmp_path, cls):
    model = save(getattr(transformers, cls), whisper_config(), tmp_path)
    feats = np.random.default_rng(0).normal(size=(2, 12, 8)).astype(np.float32)  # (B, frames, n_mels)
    with torch.no_grad():
        ref = model.get_encoder()(torch.from_numpy(feats.transpose(0, 2, 1).copy())).last_hidden_state.numpy()
    enc, variables, _ = from_transformers(str(tmp_path))
    out = run(enc, variables, feats)
    assert out.tokens.shape == (2, 6, 16) and out.pooled.shape == (2, 16)
    assert rel(out.tokens, ref) < TOL
    assert rel(out.pooled, ref.mean(axis=1)) < TOL
    assert towers(read_config(str(tmp_path))) == ("audio",)
    with pytest.raises(HFCheckpointError, match=r"input_features must be \(B, 12, 8\)"):
        enc.apply(variables, jnp.asarray(feats.transpose(0, 2, 1)))  # channels first is refused
    if cls == "WhisperModel":  # bf16 compute (the convs included) stays close to float32
        enc16, _, _ = from_transformers(str(tmp_path), dtype=jnp.bfloat16)
        out16 = run(enc16, variables, feats)
        assert out16.tokens.dtype == jnp.bfloat16
        assert rel(out16.tokens.astype(jnp.float32), out.tokens) < 3e-2


def test_ast_matches_reference(tmp_path):
    model = save(transformers.ASTModel, ast_config(), tmp_path)
    x = np.random.default_rng(1).normal(size=(2, 12, 8)).astype(np.float32)  # (B, time, mel)
    with torch.no_grad():
        ref = model(input_values=torch.from_numpy(x))
    enc, variables, _ = from_transformers(str(tmp_path))
    out = run(enc, variables, x)
    assert out.tokens.shape == (2, 2 + 2 * 5, 16)  # [CLS], distillation, 2 mel x 5 time patches
    assert rel(out.tokens, ref.last_hidden_state.numpy()) < TOL
    assert rel(out.pooled, ref.pooler_output.numpy()) < TOL


def test_ast_classification_checkpoint_converts(tmp_path):
    model = save(transformers.ASTForAudioClassification, ast_config(), tmp_path)
    x = np.random.default_rng(2).normal(size=(2, 12, 8)).astype(np.float32)
    with torch.no_grad():
        ref = model.audio_spectrogram_transformer(input_values=torch.from_numpy(x))
    enc, variables, _ = from_transformers(str(tmp_path))
    assert rel(run(enc, variables, x).pooled, ref.pooler_output.numpy()) < TOL


def clip_batch(seed=0):
    x = np.random.default_rng(seed).normal(size=(2, 4, 8, 8, 3)).astype(np.float32)  # (B, F, H, W, C)
    return x, torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy())  # (B, F, C, H, W)


@pytest.mark.parametrize("use_mean_pooling", [True, False])
def test_videomae_matches_reference(tmp_path, use_mean_pooling):
    model = save(transformers.VideoMAEModel, videomae_config(use_mean_pooling=use_mean_pooling), tmp_path)
    x, xt = clip_batch()
    with torch.no_grad():
        ref = model(pixel_values=xt).last_hidden_state.numpy()
    enc, variables, _ = from_transformers(str(tmp_path))
    out = run(enc, variables, x)
    assert out.tokens.shape == (2, 2 * 2 * 2, 16)  # 2 tubelets x 2 x 2 patches
    assert rel(out.tokens, ref) < TOL
    assert rel(out.pooled, ref.mean(axis=1)) < TOL
    assert "fc_norm" not in variables["params"]


def test_videomae_classifier_pools_with_fc_norm(tmp_path):
    model = save(transformers.VideoMAEForVideoClassification, videomae_config(), tmp_path)
    x, xt = clip_batch(1)
    with torch.no_grad():
        tokens = model.videomae(pixel_values=xt).last_hidden_state
        features = model.fc_norm(tokens.mean(1))
        logits = model(pixel_values=xt).logits.numpy()
    enc, variables, _ = from_transformers(str(tmp_path))
    out = run(enc, variables, x)
    assert rel(out.tokens, tokens.numpy()) < TOL
    assert rel(out.pooled, features.numpy()) < TOL
    # The pooled features are what the reference classifies: its head on them gives its logits.
    w, b = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    assert rel(np.asarray(out.pooled) @ w.T + b, logits) < TOL
    # The registry module is built from config.json alone and lines up with the converted weights.
    boxed = jax.eval_shape(create("pretrained", path=str(tmp_path)).init, jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3)))
    shapes = jax.tree.map(lambda v: v.value.shape, boxed["params"], is_leaf=lambda v: hasattr(v, "names"))
    assert shapes == jax.tree.map(np.shape, pretrained_variables(str(tmp_path))["params"])


def waveforms():
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.normal(size=t.size)).astype(np.float32)
    return [tone, (0.3 * rng.normal(size=5000)).astype(np.float32)]  # different lengths: padded per example


def test_whisper_preprocess_and_encoder_end_to_end(tmp_path):
    # 1 s chunks at 16 kHz, hop 160 -> 100 frames = 2 * max_source_positions.
    model = save(transformers.WhisperModel, whisper_config(max_source_positions=50), tmp_path)
    fe = transformers.WhisperFeatureExtractor(feature_size=8, chunk_length=1)
    fe.save_pretrained(str(tmp_path))
    ref_feats = fe(waveforms(), sampling_rate=16000, return_tensors="np")["input_features"]  # (B, n_mels, frames)
    enc, variables, prep = from_transformers(str(tmp_path))
    feats = prep(waveforms(), sampling_rate=16000)
    assert feats.shape == (2, 100, 8)
    assert np.abs(np.asarray(feats) - ref_feats.transpose(0, 2, 1)).max() < 1e-5
    with torch.no_grad():
        ref = model.encoder(torch.from_numpy(ref_feats)).last_hidden_state.numpy()
    assert rel(run(enc, variables, feats).tokens, ref) < TOL
    with pytest.raises(HFCheckpointError, match="expects 16000 Hz audio, got 8000 Hz"):
        prep(waveforms(), sampling_rate=8000)


def test_ast_preprocess_matches_feature_extractor(tmp_path):
    cfg = ast_config()
    fe = transformers.ASTFeatureExtractor(num_mel_bins=cfg.num_mel_bins, max_length=cfg.max_length)
    fe.save_pretrained(str(tmp_path))
    model = save(transformers.ASTModel, cfg, tmp_path)
    waves = waveforms()  # 8000 and 5000 samples: 48 and 30 frames, truncated to 12
    ref_vals = fe(waves, sampling_rate=16000, return_tensors="np")["input_values"]
    enc, variables, prep = from_transformers(str(tmp_path))
    vals = prep(waves, sampling_rate=16000)
    assert vals.shape == (2, 12, 8)
    assert np.abs(np.asarray(vals) - ref_vals).max() < 1e-5
    with torch.no_grad():
        ref = model(input_values=torch.from_numpy(ref_vals)).pooler_output.numpy()
    assert rel(run(enc, variables, vals).pooled, ref) < TOL
    # Padding: a waveform shorter than max_length frames gets zero frames, normalised, as the extractor's.
    long_fe = transformers.ASTFeatureExtractor(num_mel_bins=16, max_length=64)
    long_fe.save_pretrained(str(tmp_path / "long"))
    from mmjax.encoders.hf import ASTFeatures

    ours = np.asarray(ASTFeatures.from_dir(str(tmp_path / "long"))(waves))
    assert np.abs(ours - long_fe(waves, sampling_rate=16000, return_tensors="np")["input_values"]).max() < 1e-5


def test_videomae_preprocess_matches_image_processor(tmp_path):
    proc = transformers.VideoMAEImageProcessorPil(size={"shortest_edge": 10}, crop_size={"height": 8, "width": 8})
    proc.save_pretrained(str(tmp_path))
    model = save(transformers.VideoMAEModel, videomae_config(), tmp_path)
    ref_proc = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, size=(4, 12, 15, 3), dtype=np.uint8),
             rng.integers(0, 256, size=(4, 17, 9, 3), dtype=np.uint8)]
    ref_px = ref_proc([list(c) for c in clips], return_tensors="np")["pixel_values"]  # (B, F, C, H, W)
    enc, variables, prep = from_transformers(str(tmp_path))
    px = prep(clips)
    assert px.shape == (2, 4, 8, 8, 3)
    assert np.abs(np.asarray(px) - ref_px.transpose(0, 1, 3, 4, 2)).max() < 1e-5
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(ref_px)).last_hidden_state.numpy()
    assert rel(run(enc, variables, px).tokens, ref) < TOL
