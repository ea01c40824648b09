"""Writes a safetensors file as a PyTorch `torch.save` zip (pytorch_model.bin) without
torch: a pickled OrderedDict of tensors rebuilt by torch._utils._rebuild_tensor_v2 over
persistent storages in archive/data/<key>. Used by tests of the pytorch_model.bin path."""
import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile

src, dst = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8 : 8 + n])
data = raw[8 + n :]

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
STORAGES = {}
for name in ("FloatStorage", "LongStorage"):
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    STORAGES[name] = cls
KIND = {"F32": ("FloatStorage", 4), "I64": ("LongStorage", 8)}


class Storage:
    def __init__(self, key, kind, numel):
        self.key, self.kind, self.numel = key, kind, numel


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STORAGES[obj.kind], obj.key, "cpu", obj.numel)
        return None


state = collections.OrderedDict()
files = {}
for i, (name, info) in enumerate(sorted((k, v) for k, v in header.items() if k != "__metadata__")):
    kind, size = KIND[info["dtype"]]
    a, b = info["data_offsets"]
    numel = (b - a) // size
    key = str(i)
    files[key] = data[a:b]
    state[name] = Tensor(Storage(key, kind, numel), info["shape"])

buf = io.BytesIO()
Pickler(buf, protocol=2).dump(state)
with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/version", "3\n")
    for key, b in files.items():
        z.writestr(f"archive/data/{key}", b)
