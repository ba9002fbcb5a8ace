"""The restricted unpickler: plain data and numpy arrays load, anything that could run code does
not."""

import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch

from resnet_backbones.checkpoint import read_checkpoint
from resnet_backbones.checkpoint.safe_pickle import UnsafePickleError, safe_load, safe_loads


def _payload():
    return {
        "containers": [1, (2.5, -3), {4, 5}, frozenset({6}), OrderedDict(a=1, b=2)],
        "scalars": ["text", b"bytes", True, False, None, 10**30, 1.5e-7, 2 + 3j],
        "arrays": {
            "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
            "f64_fortran": np.asfortranarray(np.random.RandomState(0).randn(3, 5)),
            "i64": np.array([1, -2, 3], dtype=np.int64),
            "empty": np.zeros((0, 3), dtype=np.float32),
            "scalar0d": np.array(7.0, dtype=np.float32),
        },
        "numpy_scalar": np.float32(3.25),
    }


def _assert_payload_equal(got, expected):
    assert got["containers"] == expected["containers"]
    assert type(got["containers"][-1]) is OrderedDict
    assert got["scalars"] == expected["scalars"]
    for k, v in expected["arrays"].items():
        assert got["arrays"][k].dtype == v.dtype and np.array_equal(got["arrays"][k], v), k
    assert (
        got["numpy_scalar"] == expected["numpy_scalar"] and got["numpy_scalar"].dtype == np.float32
    )


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_data_and_numpy_round_trip(protocol):
    payload = _payload()
    _assert_payload_equal(safe_loads(pickle.dumps(payload, protocol=protocol)), payload)


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _refuses(tmp_path, obj, refused):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": np.ones(2), "x": obj}, f)
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message and refused in message
    # the same refusal through the checkpoint reader
    with pytest.raises(UnsafePickleError):
        read_checkpoint(path)
    return info.value


def test_os_system_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned_by_system"
    err = _refuses(tmp_path, _Evil(os.system, (f"touch {marker}",)), "system")
    assert err.module in ("posix", "nt", "os") and err.name == "system"
    assert not marker.exists()
    # control: the payload is live, an unrestricted unpickler does run it
    pickle.loads((tmp_path / "evil.pkl").read_bytes())
    assert marker.exists()


def test_file_creation_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned_by_open"
    err = _refuses(tmp_path, _Evil(open, (str(marker), "w")), "open")
    assert err.name == "open"
    assert not marker.exists()


def test_eval_and_getattr_are_refused(tmp_path):
    marker = tmp_path / "pwned_by_eval"
    _refuses(tmp_path, _Evil(eval, (f"open({str(marker)!r}, 'w')",)), "builtins.eval")
    _refuses(tmp_path, _Evil(getattr, ("text", "upper")), "builtins.getattr")
    assert not marker.exists()


def test_torch_tensor_in_pickle_is_refused(tmp_path):
    # torch tensors pickle through torch's own rebuild functions, which are not admitted
    _refuses(tmp_path, torch.ones(2), "torch")


def _short_binstring(data: bytes) -> bytes:
    assert len(data) < 256
    return b"U" + bytes([len(data)]) + data


def _binstring(data: bytes) -> bytes:
    return b"T" + struct.pack("<i", len(data)) + data


def _py2_array(arr: np.ndarray) -> bytes:
    """A numpy array exactly as Python 2 + numpy 1 pickled it at protocol 2 (byte-str data)."""
    assert arr.dtype == np.float32 and arr.flags.c_contiguous
    out = b"cnumpy.core.multiarray\n_reconstruct\n"
    out += b"cnumpy\nndarray\n" + b"K\x00\x85" + _short_binstring(b"b") + b"\x87R"
    shape = b"(" + b"".join(b"J" + struct.pack("<i", n) for n in arr.shape) + b"t"
    dtype = b"cnumpy\ndtype\n" + _short_binstring(b"f4") + b"K\x00K\x01\x87R"
    dtype += b"(K\x03" + _short_binstring(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    state = b"(K\x01" + shape + dtype + b"\x89" + _binstring(arr.tobytes()) + b"tb"
    return out + state


def _py2_pickle(blobs: dict) -> bytes:
    out = b"\x80\x02}(" + _short_binstring(b"blobs") + b"}("
    for key, arr in blobs.items():
        out += _short_binstring(key.encode()) + _py2_array(arr)
    out += b"u" + _short_binstring(b"names")
    out += b"c__builtin__\nset\n((" + _short_binstring(b"a") + _short_binstring(b"b") + b"lt" + b"R"
    return out + b"u."


def test_python2_latin1_pickle_loads(tmp_path):
    rng = np.random.RandomState(0)
    # bytes >= 0x80 in the data are what needs encoding="latin1"
    blobs = {
        "conv1_w": rng.randn(4, 3, 2, 2).astype(np.float32),
        "res_conv1_bn_s": np.float32([-1.5, 1e-8, 300]),
    }
    data = _py2_pickle(blobs)
    assert any(b >= 0x80 for b in blobs["conv1_w"].tobytes())
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    obj = safe_load(path)
    assert obj["names"] == {"a", "b"}
    for k, v in blobs.items():
        assert obj["blobs"][k].dtype == np.float32 and np.array_equal(obj["blobs"][k], v)
    # and the checkpoint reader turns it into tensors (Caffe2 "blobs" container)
    loaded = read_checkpoint(path)
    assert loaded.container == "blobs" and loaded.author == "Caffe2"
    assert torch.equal(loaded.state_dict["conv1_w"], torch.from_numpy(blobs["conv1_w"]))


def test_missing_and_broken_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        safe_load(tmp_path / "nope.pkl")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps({"a": np.ones(3)})[:-5])
    with pytest.raises(pickle.UnpicklingError, match="broken.pkl"):
        safe_load(broken)
