"""Plain-numpy (float64) formulas of the catalogue-A fusion blocks, for tests/fusion/test_catalogue_a.py.

Written from the published definitions (TorchMultimodal's attention / DeepSet
fusion, MultiBench's multiplicative interactions, NLgate, Stack, transformer
fusions) and the mmjax docstrings' mask semantics; no jax anywhere.
"""
import numpy as np

LN_EPS = 1e-6


def f64(tree):
    if isinstance(tree, dict):
        return {k: f64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def lin(p, x):
    return x @ p["kernel"] + p["bias"]


def softmax_present(logits, present, axis):
    """Softmax over ``axis`` among ``present`` entries; all absent -> zeros."""
    z = np.where(present, logits, -np.inf)
    peak = np.max(np.where(present, logits, -1e300), axis=axis, keepdims=True)
    e = np.where(present, np.exp(z - peak), 0.0)
    s = e.sum(axis=axis, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1), 0.0)


def layer_norm(p, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * p["scale"] + p["bias"]


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def mha(p, x, key_mask):
    """x (B, T, E), key_mask (B, T) -> (B, T, E): softmax(q k^T / sqrt(H)) v, masked keys weight 0."""
    q, k, v = (np.einsum("btd,dnh->btnh", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    w = softmax_present(logits, key_mask[:, None, None, :], axis=-1)
    return np.einsum("bnts,bsnh,nhd->btd", w, v, p["out"]["kernel"]) + p["out"]["bias"]


def transformer(p, x, key_mask, num_layers):
    """mmjax's pre-LN TransformerStack: per layer x + MHA(LN x), x + MLP(LN x); final LayerNorm."""
    for i in range(num_layers):
        q = p[f"layer_{i}"]
        x = x + mha(q["self_attn"], layer_norm(q["ln_attn"], x), key_mask)
        h = gelu(lin(q["mlp"]["fc1"], layer_norm(q["ln_mlp"], x)))
        x = x + lin(q["mlp"]["fc2"], h)
    return layer_norm(p["ln_final"], x)


def masked_mean(x, mask):
    m = mask[..., None].astype(np.float64)
    return (x * m).sum(1) / np.maximum(m.sum(1), 1)


def inputs(feats, mask):
    """-> sorted names, pooled {m: (B, D)}, tokens {m: (B, T, D)}, present {m: (B,)} with missing zeroed."""
    names = sorted(feats)
    pooled, tokens = {}, {}
    for n in names:
        x = np.asarray(feats[n], np.float64)
        t = x if x.ndim == 3 else x[:, None]
        tokens[n] = np.where(mask[n][:, None, None], t, 0.0)
        pooled[n] = tokens[n].mean(1)
    return names, pooled, tokens, {n: np.asarray(mask[n], bool) for n in names}


def attention_fusion(P, cfg, feats, mask):
    names, z, _, pr = inputs(feats, mask)
    present = np.stack([pr[n] for n in names], 1)
    w = softmax_present(lin(P["attention"], np.concatenate([z[n] for n in names], -1)), present, 1)
    v = np.stack([lin(P[f"proj_{n}"], z[n]) for n in names], 1)
    return (w[..., None] * v).sum(1)


def _deepset_embed(P, cfg, feats, mask):
    names, z, _, pr = inputs(feats, mask)
    present = np.stack([pr[n] for n in names], 1)
    x = np.stack([lin(P[f"proj_{n}"], z[n]) if cfg.get("project", True) else z[n] for n in names], 1)
    x = x * present[..., None]
    if cfg.get("apply_attention"):
        a = lin(P["attention_score"], np.tanh(lin(P["attention_hidden"], x)))[..., 0]
        x = x * softmax_present(a, present, 1)[..., None]
    p = cfg.get("norm_factor", 2.0)
    axis = 1 if cfg.get("modality_normalize") else 2
    norm = (np.abs(x) ** p).sum(axis, keepdims=True) ** (1 / p)
    return x / np.maximum(norm, 1e-12), present


def _rho(P, cfg, h):
    for i in range(len(cfg.get("hidden_dims", ()))):
        h = np.maximum(lin(P[f"mlp_{i}"], h), 0)
    return lin(P["out"], h)


def deepset(P, cfg, feats, mask):
    x, present = _deepset_embed(P, cfg, feats, mask)
    pooling = cfg.get("pooling", "sum")
    if pooling == "max":
        pooled = np.where(present[..., None], x, -np.inf).max(1)
        pooled = np.where(present.any(1)[:, None], pooled, 0.0)
    else:
        pooled = (x * present[..., None]).sum(1)
        if pooling == "mean":
            pooled = pooled / np.maximum(present.sum(1, keepdims=True), 1)
    return _rho(P, cfg, pooled)


def deepset_transformer(P, cfg, feats, mask):
    x, present = _deepset_embed(P, cfg, feats, mask)
    keys = present | ~present.any(1, keepdims=True)
    h = transformer(P["transformer"], x, keys, cfg.get("num_layers", 1))
    return _rho(P, cfg, h[:, 0])


def multiplicative(P, cfg, feats, mask):
    names, z, _, _ = inputs(feats, mask)
    order = list(cfg.get("order") or names)
    form = cfg.get("output", "matrix")
    h = z[order[0]]
    for k, n in enumerate(order[1:], start=1):
        y = z[n]
        W, U, V, b = (P[f"link_{k}_{s}"] for s in "WUVb")
        if form == "matrix":
            # A hypernetwork: the context x generates the weights (x W + V) and bias (x U + b) applied to y.
            weights = np.einsum("bn,nmd->bmd", h, W) + V
            h = np.einsum("bm,bmd->bd", y, weights) + h @ U + b
        elif form == "vector":
            h = (h @ W + V) * y + h @ U + b
        else:
            h = (h @ W + V)[:, None] * y + (h @ U + b)[:, None]
    h = lin(P["proj"], h) if "proj" in P else h
    return layer_norm(P["norm"], h) if cfg.get("normalize", True) else h


def nl_gate(P, cfg, feats, mask):
    names, z, tok, pr = inputs(feats, mask)
    qn = cfg.get("query") or names[0]
    gn = [n for n in names if n != qn][0]
    q = lin(P["q"], tok[qn]) if cfg.get("dim") else tok[qn]
    c = q.shape[-1]
    if cfg.get("kv_tokens"):
        s = cfg["kv_tokens"]
        keys = lin(P["k"], z[gn]).reshape(-1, c, s)  # NLgate: kli(k).view(-1, c_dim, tf_dim)
        values = lin(P["v"], z[gn]).reshape(-1, s, c)
        logits = q @ keys
        key_mask = np.repeat(pr[gn][:, None], s, 1)
    else:
        keys, values = lin(P["k"], tok[gn]), lin(P["v"], tok[gn])
        logits = q @ keys.transpose(0, 2, 1)
        key_mask = np.repeat(pr[gn][:, None], tok[gn].shape[1], 1)
    att = softmax_present(logits, key_mask[:, None, :], -1) @ values
    g = (q + att) * pr[qn][:, None, None]
    return lin(P["out"], g.reshape(g.shape[0], -1))


def stack(P, cfg, feats, mask):
    names, z, tok, _ = inputs(feats, mask)
    if cfg.get("inputs", "tokens") == "pooled":
        s = np.stack([z[n] for n in names], -1)
    else:
        s = np.concatenate([tok[n] for n in names], -1)
    return lin(P["proj"], s.reshape(s.shape[0], -1))


def _project(P, cfg, tok, pr, names):
    x, masks = {}, {}
    for n in names:
        t, m = tok[n], np.repeat(pr[n][:, None], tok[n].shape[1], 1)
        if cfg.get("pooled_token"):
            t = np.concatenate([t.mean(1, keepdims=True), t], 1)  # with_pooled_token
            m = np.concatenate([pr[n][:, None], m], 1)
        h = lin(P[f"proj_{n}"], t)
        x[n] = h + P[f"pos_emb_{n}"] if cfg.get("pos_emb") else h
        masks[n] = m
    return x, masks


def early_transformer(P, cfg, feats, mask):
    names, _, tok, pr = inputs(feats, mask)
    x, masks = _project(P, cfg, tok, pr, names)
    seq = np.concatenate([x[n] + P[f"modality_emb_{n}"] for n in names], 1)
    m = np.concatenate([masks[n] for n in names], 1)
    if cfg.get("readout") == "pooled_token":
        read = np.concatenate([np.eye(masks[n].shape[1])[0][None] * pr[n][:, None] for n in names], 1) > 0
    else:
        read = m
    h = transformer(P["transformer"], seq, m | ~m.any(1, keepdims=True), cfg.get("num_layers", 1))
    return lin(P["out"], masked_mean(h, read))


def late_transformer(P, cfg, feats, mask):
    names, _, tok, pr = inputs(feats, mask)
    x, masks = _project(P, cfg, tok, pr, names)
    pooled = []
    for n in names:
        m = masks[n]
        h = transformer(P[f"transformer_{n}"], x[n], m | ~m.any(1, keepdims=True), cfg.get("num_layers", 1))
        h = h[:, 0] if cfg.get("readout") == "pooled_token" else masked_mean(h, m)
        pooled.append(h * pr[n][:, None])
    return lin(P["out"], np.concatenate(pooled, -1))


FORMULAS = {f.__name__: f for f in (attention_fusion, deepset, deepset_transformer, multiplicative, nl_gate, stack,
                                    early_transformer, late_transformer)}


def reference(name, params, cfg, feats, mask):
    return FORMULAS[name](f64(params), cfg, feats, mask)
