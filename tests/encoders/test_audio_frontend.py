"""The JAX audio frontend against librosa (a test-only dependency) and scipy.

Tolerances (float32 here, float64 librosa), as stated in audio_frontend's docstring:
melspectrogram |got - ref| <= 1e-4 |ref| + 1e-5 max(ref); power_to_db 0.01 dB; MFCC 0.01.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.signal

from mmjax.encoders import audio_frontend as af

librosa = pytest.importorskip("librosa")

SR, N_FFT, HOP, N_MELS, N_MFCC = 8000, 256, 64, 40, 13
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def signals():
    t = np.arange(4000) / SR
    rng = np.random.default_rng(0)
    return {
        "tone_440": 0.5 * np.sin(2 * np.pi * 440 * t),
        "tone_2500": 0.9 * np.sin(2 * np.pi * 2500 * t + 0.3),
        "chirp": np.sin(2 * np.pi * (100 * t + 0.5 * (3500 - 100) / t[-1] * t**2)),
        "white_noise": 0.3 * rng.normal(size=t.size),
        "tone_plus_noise": 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.05 * rng.normal(size=t.size),
    }


@pytest.fixture(scope="module")
def batch():
    sig = signals()
    return list(sig), np.stack(list(sig.values()))


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_melspectrogram_db_and_mfcc_match_librosa(batch, pad_mode):
    names, waves = batch
    kw = dict(sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, pad_mode=pad_mode)

    @jit
    def frontend(w):
        mel = af.melspectrogram(w, **kw)
        return mel, af.power_to_db(mel), af.mfcc(w, n_mfcc=N_MFCC, **kw)

    mel, db, mfcc = jax.tree.map(np.asarray, frontend(jnp.asarray(waves, jnp.float32)))
    for i, name in enumerate(names):
        y = waves[i]
        ref = librosa.feature.melspectrogram(y=y, **kw).T  # librosa is (mels, frames)
        assert mel[i].shape == ref.shape, name
        np.testing.assert_allclose(mel[i], ref, rtol=1e-4, atol=1e-5 * ref.max(), err_msg=name)
        np.testing.assert_allclose(db[i], librosa.power_to_db(ref.T).T, atol=0.01, err_msg=name)
        ref_mfcc = librosa.feature.mfcc(y=y, n_mfcc=N_MFCC, **kw).T
        np.testing.assert_allclose(mfcc[i], ref_mfcc, atol=0.01, err_msg=name)


@pytest.mark.parametrize("kw", [dict(), dict(fmin=50.0, fmax=3000.0), dict(htk=True, fmin=20.0), dict(norm=None)])
def test_mel_filterbank_matches_librosa(kw):
    got = af.mel_filterbank(SR, N_FFT, N_MELS, **kw)
    ref = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(af.hz_to_mel([0, 440, 1000, 5000]), librosa.hz_to_mel([0, 440, 1000, 5000]), rtol=1e-10)


def test_dct_and_window_match_scipy():
    x = np.random.default_rng(1).normal(size=(3, 40))
    np.testing.assert_allclose(x @ af.dct_matrix(13, 40), scipy.fft.dct(x, type=2, norm="ortho")[:, :13], atol=1e-5)
    np.testing.assert_allclose(af.hann_window(256, 256), scipy.signal.get_window("hann", 256, fftbins=True), atol=1e-7)


@pytest.mark.filterwarnings("ignore:n_fft=.*too large")
def test_frame_mask_matches_librosa_frame_counts_and_padding_is_invisible(batch):
    _, waves = batch
    lengths = np.array([4000, 3000, 1000, 64, 63])
    mask = np.arange(4000)[None] < lengths[:, None]
    kw = dict(sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    frames = np.asarray(af.frame_mask(jnp.asarray(mask), N_FFT, HOP))
    for i, n in enumerate(lengths):
        assert frames[i].sum() == librosa.feature.melspectrogram(y=waves[i, :n], **kw).shape[1]
    garbage = np.where(mask, waves, 100.0).astype(np.float32)
    log_mel = np.asarray(jit(lambda w, m: af.log_melspectrogram(w, mask=m, **kw))(garbage, mask))
    for i, n in enumerate(lengths[:3]):
        ref = librosa.power_to_db(librosa.feature.melspectrogram(y=waves[i, :n], **kw)).T
        np.testing.assert_allclose(log_mel[i][frames[i]], ref, atol=0.01)


def test_gradient_is_finite_on_silence():
    grad = jax.grad(lambda w: af.log_melspectrogram(w, sr=SR, n_fft=64, hop_length=32, n_mels=8).sum())
    g = np.asarray(grad(jnp.zeros((1, 256))))
    assert np.isfinite(g).all()


def test_bad_config_errors():
    with pytest.raises(ValueError, match=r"expected a \(B, N\) waveform"):
        af.melspectrogram(jnp.zeros((10,)), sr=SR, n_fft=64)
    with pytest.raises(ValueError, match="pad_mode"):
        af.stft_power(jnp.zeros((1, 100)), n_fft=64, pad_mode="wrap")
    with pytest.raises(ValueError, match="fmax"):
        af.mel_filterbank(SR, 64, 8, fmax=SR)
    with pytest.raises(ValueError, match="n_mfcc"):
        af.dct_matrix(20, 8)
