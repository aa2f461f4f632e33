"""Sharded conversion on 8 fake CPU devices (a child process: the device count is fixed at JAX start).

Tiny random ViT and BERT checkpoints are converted onto a (data 2, fsdp 2, tensor 2) mesh with
``mmjax.encoders.hf.sharded.sharded_variables``: every device's shard equals its slice of the
unsharded conversion, no weight whose spec names a mesh axis sits whole on a device, the
transformer layers' weights get the same mesh axes as the native ``vit`` / ``transformer``
encoders', and the sharded tower computes what the unsharded one does; ``init_from.pretrained``
into a sharded classifier places the same shards with the same shardings.
"""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sharded_child.py")
SIZES = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)

pytestmark = pytest.mark.multidevice


def _save(tmp_path):
    torch.manual_seed(0)
    vit, bert = tmp_path / "vit", tmp_path / "bert"
    transformers.ViTModel(transformers.ViTConfig(**SIZES, image_size=32, patch_size=8)).save_pretrained(str(vit))
    transformers.BertModel(transformers.BertConfig(**SIZES, vocab_size=99, max_position_embeddings=16)
                           ).save_pretrained(str(bert))
    return str(vit), str(bert)


def test_sharded_conversion_places_each_devices_slice_with_the_native_axes(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, CHILD, *_save(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads([l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):])
    init = res.pop("init_from")
    assert init["shards_equal"] and init["same_shardings"] and init["sharded_leaves"] > 10, init
    for name, r in res.items():
        assert r["devices"] == 8, name
        assert r["shards_equal"], name
        assert r["full_copies"] == 0, name
        assert r["sharded_leaves"] == r["spec_leaves"] > 0, (name, r)
        assert r["device_bytes_max"] < 0.6 * r["total_bytes"], (name, r)
        for path, (ours, native) in r["same_axes"].items():
            assert ours == native, (name, path, ours, native)
        assert r["pooled_rel_err"] < 1e-5, (name, r["pooled_rel_err"])
    # A vocabulary of 99 does not split over tensor=2: that dim is replicated, the width still sharded.
    assert res["bert"]["specs"]["word_embeddings/embedding"] == "P(None, 'fsdp')"
    assert res["vit"]["specs"]["layer_0/fc1/kernel"] == "P('fsdp', 'tensor')"
