"""Write the Python 2 pickles of numpy arrays that tests/data/test_security_loaders.py reads (run with Python 2.7).

Python 2 has no numpy here, so this script stands in for it: objects named ``numpy.ndarray`` / ``numpy.dtype``
whose ``__reduce__`` return what numpy 1.x's ``ndarray.__reduce__`` / ``dtype.__reduce__`` return on Python 2
(``_reconstruct`` with a dummy ``'b'`` typecode, state version 1 with the raw little-endian bytes as a ``str``;
``dtype('f4', 0, 1)`` with state version 3), pickled by Python 2's own cPickle.

    python2.7 tests/data/make_py2_tables.py    # writes py2_protocol2_f4_21x300.pkl, py2_protocol0_f8_21x8.pkl

Values: element i (row-major) is ((i % 97) / 97.0 - 0.5), stored as float32 or float64.
"""
from __future__ import print_function

import cPickle
import os
import struct
import sys
import types

multiarray = types.ModuleType("numpy.core.multiarray")
numpy = types.ModuleType("numpy")
core = types.ModuleType("numpy.core")
sys.modules.update({"numpy": numpy, "numpy.core": core, "numpy.core.multiarray": multiarray})


def _reconstruct(subtype, shape, typecode):
    raise AssertionError("only written, never read here")


_reconstruct.__module__ = "numpy.core.multiarray"
multiarray._reconstruct = _reconstruct


class dtype(object):
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return dtype, (self.code, 0, 1), (3, "<", None, None, None, -1, -1, 0)


class ndarray(object):
    def __init__(self, shape, code):
        count = shape[0] * shape[1]
        values = [(i % 97) / 97.0 - 0.5 for i in range(count)]
        self.shape, self.dtype = shape, dtype(code)
        self.raw = struct.pack("<%d%s" % (count, {"f4": "f", "f8": "d"}[code]), *values)

    def __reduce__(self):
        return _reconstruct, (ndarray, (0,), "b"), (1, self.shape, self.dtype, False, self.raw)


dtype.__module__ = ndarray.__module__ = "numpy"
numpy.dtype, numpy.ndarray = dtype, ndarray

here = os.path.dirname(os.path.abspath(__file__))
for name, protocol, shape, code in (("py2_protocol2_f4_21x300.pkl", 2, (21, 300), "f4"),
                                    ("py2_protocol0_f8_21x8.pkl", 0, (21, 8), "f8")):
    with open(os.path.join(here, name), "wb") as handle:
        cPickle.dump(ndarray(shape, code), handle, protocol)
    print("wrote", name)
