"""Contrastive losses, dual-encoder model, retrieval metrics and linear probe."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import contrastive_loss as L
from mmjax.models import retrieval as R
from mmjax.models.contrastive import ContrastiveConfigError, ContrastiveModel


def rkey(seed):
    """An RBG key: its initialisers compile several times faster than threefry's,
    which dominates the cost of these tiny tests."""
    return jax.random.key(seed, impl="unsafe_rbg")


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_clip(a, b, log_scale):
    """Loop-based InfoNCE: each row / column is a softmax over the other tower."""
    s = math.exp(min(log_scale, math.log(100.0)))
    B = len(a)
    logits = s * a.astype(np.float64) @ b.T.astype(np.float64)
    i2t = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(B)])
    t2i = -np.mean([logits[j, j] - np.log(np.exp(logits[:, j]).sum()) for j in range(B)])
    return 0.5 * (i2t + t2i)


def np_siglip(a, b, t, bias):
    B = len(a)
    total = 0.0
    for i in range(B):
        for j in range(B):
            z = 1.0 if i == j else -1.0
            logit = math.exp(t) * float(a[i] @ b[j]) + bias
            total += math.log1p(math.exp(-z * logit))
    return total / B


@pytest.fixture(scope="module")
def emb():
    rng = np.random.default_rng(0)
    return unit(rng.normal(size=(6, 5))).astype(np.float32), unit(rng.normal(size=(6, 5))).astype(np.float32)


@pytest.mark.parametrize("log_scale", [0.5, math.log(1 / 0.07), 6.0])
def test_clip_loss_matches_numpy(emb, log_scale):
    a, b = emb
    got = L.clip_loss(a, b, jnp.float32(log_scale))
    np.testing.assert_allclose(got, np_clip(a, b, log_scale), rtol=1e-5)
    # Symmetric: swapping the towers transposes the logits, same loss.
    np.testing.assert_allclose(L.clip_loss(b, a, jnp.float32(log_scale)), got, rtol=1e-6)


def test_clip_scale_is_clamped_at_100(emb):
    a, b = emb
    g = jax.grad(L.clip_loss, argnums=2)(a, b, jnp.float32(6.0))
    assert float(g) == 0.0  # above log 100 the clamp stops the gradient
    assert float(jax.grad(L.clip_loss, argnums=2)(a, b, jnp.float32(1.0))) != 0.0
    np.testing.assert_allclose(L.clip_scale(jnp.float32(6.0)), 100.0, rtol=1e-6)


@pytest.mark.parametrize("t,bias", [(math.log(10.0), -10.0), (1.0, 0.5)])
def test_siglip_loss_matches_numpy(emb, t, bias):
    a, b = emb
    got = L.siglip_loss(a, b, jnp.float32(t), jnp.float32(bias))
    np.testing.assert_allclose(got, np_siglip(a, b, t, bias), rtol=1e-5)
    np.testing.assert_allclose(L.siglip_loss(b, a, jnp.float32(t), jnp.float32(bias)), got, rtol=1e-5)


def test_loss_shape_errors():
    with pytest.raises(L.ContrastiveLossError, match=r"equal shapes"):
        L.clip_loss(jnp.zeros((4, 3)), jnp.zeros((5, 3)), 1.0)
    with pytest.raises(L.ContrastiveLossError, match=r"\(B, E\)"):
        L.siglip_loss(jnp.zeros((4,)), jnp.zeros((4,)), 1.0, 0.0)


# --- model ---------------------------------------------------------------------

TOWERS = {"image": {"encoder": "mlp", "features": (8,)}, "text": {"encoder": "mlp", "features": (6,)}}


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    return {
        "inputs": {
            "image": rng.normal(size=(4, 7)).astype(np.float32),
            "text": rng.normal(size=(4, 3)).astype(np.float32),
            "audio": rng.normal(size=(4, 2)).astype(np.float32),
        }
    }


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_model_embeddings_and_loss(batch, loss):
    model = ContrastiveModel(towers=TOWERS, embed_dim=4, loss=loss)
    variables = jax.jit(model.init)(rkey(0), batch)
    params = nn.unbox(variables["params"])
    pair = params["pair_logits_image_text"]
    if loss == "clip":
        np.testing.assert_allclose(pair["log_scale"], math.log(1 / 0.07), rtol=1e-6)
        assert "bias" not in pair
    else:
        np.testing.assert_allclose(pair["log_scale"], math.log(10.0), rtol=1e-6)
        np.testing.assert_allclose(pair["bias"], -10.0)
    out = model.apply(variables, batch)
    assert set(out) == {"image", "text"}
    for m in out:
        assert out[m].shape == (4, 4)
        np.testing.assert_allclose(np.linalg.norm(out[m], axis=-1), 1.0, rtol=1e-5)
    # The embedding is the L2-normalised projection of the encoder's pooled output.
    enc = params["encoders_image"]["dense_0"]
    pooled = batch["inputs"]["image"] @ enc["kernel"] + enc["bias"]
    np.testing.assert_allclose(out["image"], unit(pooled @ params["projections_image"]["kernel"]), rtol=1e-4, atol=1e-5)
    value, metrics = model.apply(variables, batch, method="loss_fn")
    a, b = np.asarray(out["image"]), np.asarray(out["text"])
    ref = np_clip(a, b, float(pair["log_scale"])) if loss == "clip" else np_siglip(
        a, b, float(pair["log_scale"]), float(pair["bias"])
    )
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    assert metrics["loss/image_text"] == value


def test_three_towers_average_pairs(batch):
    towers = dict(TOWERS, audio={"encoder": "mlp", "features": (5,)})
    model = ContrastiveModel(towers=towers, embed_dim=3)
    variables = jax.jit(model.init)(rkey(1), batch)
    params = nn.unbox(variables["params"])
    assert {k for k in params if k.startswith("pair_logits")} == {
        "pair_logits_audio_image", "pair_logits_audio_text", "pair_logits_image_text"}
    value, metrics = model.apply(variables, batch, method="loss_fn")
    pairs = [metrics[f"loss/{p}"] for p in ("audio_image", "audio_text", "image_text")]
    np.testing.assert_allclose(value, np.mean(pairs), rtol=1e-6)


def test_model_config_errors(batch):
    with pytest.raises(ContrastiveConfigError, match="at least two"):
        ContrastiveModel(towers={"image": TOWERS["image"]}).init(rkey(0), batch)
    with pytest.raises(ContrastiveConfigError, match="loss must be one of"):
        ContrastiveModel(towers=TOWERS, loss="triplet").init(rkey(0), batch)
    with pytest.raises(ContrastiveConfigError, match=r"lacks the tower modalities \['video'\]"):
        towers = dict(TOWERS, video={"encoder": "mlp"})
        ContrastiveModel(towers=towers).init(rkey(0), batch)


# --- retrieval ----------------------------------------------------------------


def test_recall_on_constructed_embeddings():
    # Keys are the one-hot basis; query i puts its largest weight on key perm[i]'s slot
    # so the rank of the true key is known exactly.
    E = 12
    keys = np.eye(E, dtype=np.float32)
    true_rank = np.array([0, 0, 1, 3, 4, 5, 9, 11, 0, 2, 6, 7])
    queries = np.zeros((E, E), np.float32)
    for i, r in enumerate(true_rank):
        others = [j for j in range(E) if j != i]
        # r wrong keys score above the correct one, the rest below.
        for k, j in enumerate(others):
            queries[i, j] = 2.0 - 0.01 * k if k < r else 0.5 - 0.01 * k
        queries[i, i] = 1.0
    ranks = R.retrieval_ranks(queries, keys)
    np.testing.assert_array_equal(ranks, true_rank)
    rec = R.recall_at_k(queries, keys)
    assert float(rec[1]) == pytest.approx(3 / 12)
    assert float(rec[5]) == pytest.approx(np.mean(true_rank < 5))
    assert float(rec[10]) == pytest.approx(np.mean(true_rank < 10))
    both = R.retrieval_metrics(queries, keys)
    assert float(both["image_to_text/R@1"]) == pytest.approx(3 / 12)
    # keys -> queries: key j's scores are column j of the same matrix.
    np.testing.assert_allclose(
        float(both["text_to_image/R@1"]), np.mean(R.retrieval_ranks(keys, queries) == 0))


def test_ties_are_pessimistic_and_ids_group_keys():
    q = np.ones((4, 2), np.float32)
    k = np.ones((4, 2), np.float32)  # every score ties
    np.testing.assert_array_equal(R.retrieval_ranks(q, k), [3, 3, 3, 3])
    assert float(R.recall_at_k(q, k, ks=(1,))[1]) == 0.0
    # Two captions per image: query 0 (image 0) matches keys 0 and 1.
    img = np.array([[1, 0], [0, 1]], np.float32)
    caps = np.array([[0.2, 0.9], [0.9, 0.1], [0.1, 1.0], [0.5, 0.4]], np.float32)
    ranks = R.retrieval_ranks(img, caps, np.array([0, 1]), np.array([0, 0, 1, 1]))
    np.testing.assert_array_equal(ranks, [0, 0])
    with pytest.raises(R.RetrievalInputError, match="pair up one to one"):
        R.retrieval_ranks(img, caps)


def test_zero_shot():
    classes = unit(np.array([[[1, 0.1, 0], [1, -0.1, 0]], [[0, 1, 0], [0, 1, 0.2]], [[0, 0, 1], [0.1, 0, 1]]],
                            np.float32))
    x = unit(np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.1, 0.7], [0.6, 0.5, 0]], np.float32))
    np.testing.assert_array_equal(R.zero_shot_predict(x, classes), [0, 1, 2, 0])
    assert float(R.zero_shot_accuracy(x, classes, np.array([0, 1, 2, 1]))) == pytest.approx(0.75)
    cls = R.zero_shot_classifier(classes)
    np.testing.assert_allclose(cls, unit(classes.mean(1)), rtol=1e-6)


def test_linear_probe_separates_separable_set():
    rng = np.random.default_rng(3)
    centers = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], np.float32)
    y = rng.integers(0, 3, size=60)
    x = centers[y] + 0.3 * rng.normal(size=(60, 4)).astype(np.float32)
    params, objective = R.linear_probe(x, y, 3, l2=1e-3, steps=50)
    assert params["w"].shape == (4, 3)
    assert float(np.mean(np.asarray(R.linear_probe_predict(params, x)) == y)) == 1.0
    # The L-BFGS optimum has zero gradient of the penalised objective.
    grad = jax.grad(R._probe_loss)(params, jnp.asarray(x), jnp.asarray(y), 1e-3)
    assert float(jnp.abs(grad["w"]).max()) < 1e-3
    assert float(objective) < 0.2
