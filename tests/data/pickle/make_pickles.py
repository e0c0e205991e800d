#!/usr/bin/env python3
"""Writes the small PyTorch checkpoints tests/test_pytorch.c reads (and the
fuzz seed corpora): one good torch.save zip and variants broken in one way
each. Run from this directory with a Python that has torch:
    /usr/bin/python3 make_pickles.py
The outputs are committed; the tests do not need torch."""
import collections, os, shutil, zipfile
import torch

here = os.path.dirname(os.path.abspath(__file__))
def out(name): return os.path.join(here, name)

sd = collections.OrderedDict()
sd["w"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
sd["b"] = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
sd["h"] = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float16)
sd["row"] = sd["w"][1]          # shares w's storage at element offset 3
sd["i"] = torch.tensor([7, -1], dtype=torch.int64)
torch.save(sd, out("good.bin"))

with zipfile.ZipFile(out("good.bin")) as z:
    infos = z.infolist()
    data = {i.filename: z.read(i.filename) for i in infos}
rec = infos[0].filename.split("/")[0]
open(out("good.pkl"), "wb").write(data[rec + "/data.pkl"])

def rezip(name, members, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(out(name), "w", method) as z:
        for k, v in members.items(): z.writestr(k, v)

rezip("deflated.bin", data, zipfile.ZIP_DEFLATED)
rezip("missing_storage.bin", {k: v for k, v in data.items() if k != rec + "/data/1"})
rezip("short_storage.bin", {k: (v[:-2] if k == rec + "/data/0" else v) for k, v in data.items()})
rezip("traversal.bin", dict(data, **{"../../etc/evil": b"x"}))
rezip("no_pickle.bin", {k: v for k, v in data.items() if not k.endswith("data.pkl")})
rezip("big_endian.bin", dict(data, **{rec + "/byteorder": b"big"}))
torch.save(sd, out("legacy.bin"), _use_new_zipfile_serialization=False)

# A zip bomb by declaration: deflated.bin with data.pkl's uncompressed size
# set to 500 MB in both its local header and the central directory.
raw = bytearray(open(out("deflated.bin"), "rb").read())
name = (rec + "/data.pkl").encode()
for sig, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
    i = raw.find(sig)
    while i >= 0:
        if raw[i + name_at:i + name_at + len(name)] == name:
            raw[i + size_at:i + size_at + 4] = (500_000_000).to_bytes(4, "little")
        i = raw.find(sig, i + 4)
open(out("bomb.bin"), "wb").write(bytes(raw))
