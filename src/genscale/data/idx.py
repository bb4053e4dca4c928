"""Decode IDX files (the MNIST/Fashion-MNIST format) without torchvision.

Format (LeCun et al.): two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension, then the data in C order.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from genscale.errors import GenscaleError

# IDX type code -> numpy big-endian dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a native-endian array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise GenscaleError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise GenscaleError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise GenscaleError(f"{path}: IDX header is truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: 2^31 x 2^31 x 2^31 does not wrap around
    if len(raw) != expected:
        raise GenscaleError(f"{path}: IDX body has {len(raw) - header} bytes, shape {shape} needs "
                            f"{expected - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
