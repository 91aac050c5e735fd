"""Decoding a Q4_K super-block, a worked solution (see README.md)."""

import numpy as np

D, DMIN, SCALES, QS, END = 0, 2, 4, 16, 144   # byte offsets of block_q4_K's fields
SUB = 32                                       # weights per sub-block


def fields(raw):
    d = raw[D:DMIN].view(np.float16)[0].astype(np.float32)
    dmin = raw[DMIN:SCALES].view(np.float16)[0].astype(np.float32)
    return d, dmin, raw[SCALES:QS], raw[QS:END]


def scale_min(scales):
    s = scales.astype(np.int32)
    a, b, c = s[0:4], s[4:8], s[8:12]                      # bytes 0-3, 4-7, 8-11
    sc = np.concatenate([a & 63, (c & 15) | ((a >> 6) << 4)])
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)])
    return sc, m


def codes(qs):
    chunks = qs.reshape(4, SUB)                            # (chunk, l)
    return np.stack([chunks & 15, chunks >> 4], axis=1).reshape(-1)   # (chunk, half, l) -> (256,)


def decode(raw):
    d, dmin, scales, qs = fields(raw)
    sc, m = scale_min(scales)
    d1 = d * sc.astype(np.float32)                         # (8,) float32 products first
    m1 = dmin * m.astype(np.float32)
    q = codes(qs).astype(np.float32).reshape(8, SUB)       # (sub-block, l)
    return (d1[:, None] * q - m1[:, None]).reshape(-1)
