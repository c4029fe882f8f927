"""Reference quantisers of tinylora's block formats, written from their published definitions
(numpy, float32 arithmetic where the definitions compute in float32):

  q8_0  GGML's quantize_row_q8_0_ref: d = amax / 127, q = round-half-away(x · (1/d)), d as F16
  q4_0  GGML's quantize_row_q4_0_ref: d = max / -8 (max: the value of largest magnitude, the
        first such), q = min(15, trunc(x · (1/d) + 8.5)), d as F16; weight j in the low nibble
        of byte j, weight j + 16 in its high nibble
  nf4   bitsandbytes' blockwise NF4 (blocks of 64): absmax = max |x|, code = the decision tree
        of dQuantizeNF4 on x · (1/absmax) (midpoints between levels; a tie takes the lower
        level; NaN takes code 0); weight = level · absmax
  double quantisation (bitsandbytes' quantize_4bit, compress_statistics=True): offset = mean
        of the absmaxes (float64 sum, rounded to float32 once: bitsandbytes takes torch's
        float32 mean, which may differ in its last bit); (absmax - offset) in blocks of 256,
        each with absmax2 = max |.|, coded by dQuantize's binary search through the dynamic map;
        the absmax used is then map[code] · absmax2 + offset.

The byte layouts written here are the in-memory ones of src/ops/quantize.h (NF4: byte j holds
weight j in its low nibble and weight j + 32 in its high nibble, F32 absmax first).
"""
import math
import struct

import numpy as np

f32 = np.float32

NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=f32)


def dynamic_map():
    """bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), with
    torch's float32 linspace (torch is the published definition's arithmetic)."""
    import torch
    data = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2 ** i + 1)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    data.sort()
    return np.array(data, dtype=f32)


def f16_bits(x):
    return int(np.array([x], dtype=f32).astype(np.float16).view(np.uint16)[0])


def f16_value(bits):
    return f32(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def quantize_q8_0(x):
    out = bytearray()
    for b in range(0, len(x), 32):
        v = x[b:b + 32].astype(f32)
        amax = f32(np.max(np.abs(v)))
        d = f32(amax / f32(127))
        idv = f32(1) / d if d != 0 else f32(0)
        q = [int(math.copysign(math.floor(abs(float(t)) + 0.5), t)) for t in (v * idv).astype(f32)]
        out += struct.pack("<H", f16_bits(d)) + struct.pack("<32b", *q)
    return bytes(out)


def dequantize_q8_0(raw):
    out = []
    for b in range(0, len(raw), 34):
        d = f16_value(struct.unpack_from("<H", raw, b)[0])
        out += [f32(q) * d for q in struct.unpack_from("<32b", raw, b + 2)]
    return np.array(out, dtype=f32)


def quantize_q4_0(x):
    out = bytearray()
    for b in range(0, len(x), 32):
        v = x[b:b + 32].astype(f32)
        amax, mx = f32(0), f32(0)
        for t in v:
            if amax < abs(t):
                amax, mx = f32(abs(t)), t
        d = f32(mx / f32(-8))
        idv = f32(1) / d if d != 0 else f32(0)
        q = [min(15, int(f32(f32(t * idv) + f32(8.5)))) for t in v]
        out += struct.pack("<H", f16_bits(d)) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return bytes(out)


def dequantize_q4_0(raw):
    out = []
    for b in range(0, len(raw), 18):
        d = f16_value(struct.unpack_from("<H", raw, b)[0])
        qs = raw[b + 2:b + 18]
        out += [f32((c & 15) - 8) * d for c in qs] + [f32((c >> 4) - 8) * d for c in qs]
    return np.array(out, dtype=f32)


NF4_MIDPOINTS = [f32((float(NF4_LEVELS[k]) + float(NF4_LEVELS[k + 1])) / 2) for k in range(15)]


def nf4_code(t):
    # the decision tree's outcome: the number of midpoints t is strictly above (NaN: none)
    return sum(1 for m in NF4_MIDPOINTS if t > m)


def nf4_absmax_codes(x):
    absmax, codes = [], []
    for b in range(0, len(x), 64):
        v = x[b:b + 64].astype(f32)
        a = f32(np.max(np.abs(v)))
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = f32(1) / a
            codes.append([nf4_code(t) for t in (v * inv).astype(f32)])
        absmax.append(a)
    return np.array(absmax, dtype=f32), codes


def pack_nf4(absmax, codes):
    out = bytearray()
    for a, q in zip(absmax, codes):
        out += struct.pack("<f", a) + bytes(q[j] | (q[j + 32] << 4) for j in range(32))
    return bytes(out)


def dynamic_code(m, x):
    # bitsandbytes' dQuantize<0>, from its description: seven halving steps of a binary search
    # from the middle of the sorted map (x > value: go up), remembering the last index passed
    # below and above (the map's ends when none); then the final index or its neighbour on
    # x's side, whichever is nearer, decided by strict comparisons with their midpoint.
    pivot, lo, hi = 127, 0, 255
    lo_v, hi_v = m[0], m[255]
    val = m[pivot]
    step = 64
    while step > 0:
        if x > val:
            lo, lo_v = pivot, val
            pivot += step
        else:
            hi, hi_v = pivot, val
            pivot -= step
        val = m[pivot]
        step >>= 1
    if x > val:
        return hi if x > f32(f32(hi_v + val) * f32(0.5)) else pivot
    return lo if x < f32(f32(lo_v + val) * f32(0.5)) else pivot


def double_quantize(absmax, m):
    offset = f32(np.sum(absmax.astype(np.float64)) / len(absmax))
    centred = (absmax - offset).astype(f32)
    codes, absmax2, used = [], [], []
    for b in range(0, len(centred), 256):
        v = centred[b:b + 256]
        a2 = f32(np.max(np.abs(v)))
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = f32(1) / a2
            c = [dynamic_code(m, f32(t * inv)) for t in v]
        codes += c
        absmax2.append(a2)
        used += [f32(f32(m[k] * a2) + offset) for k in c]
    return offset, codes, np.array(absmax2, dtype=f32), np.array(used, dtype=f32)


def dequantize_nf4(raw):
    out = []
    for b in range(0, len(raw), 36):
        a = f32(struct.unpack_from("<f", raw, b)[0])
        qs = raw[b + 4:b + 36]
        q = [c & 15 for c in qs] + [c >> 4 for c in qs]
        out += [f32(NF4_LEVELS[k] * a) for k in q]
    return np.array(out, dtype=f32)
