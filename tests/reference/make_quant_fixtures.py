"""Writes tests/fixtures/quant/quant.json: inputs and the bytes quant_ref.py's reference
quantisers make of them (q8_0, q4_0, nf4, and nf4's double quantisation), plus bitsandbytes'
dynamic map. Deterministic.   /usr/bin/python3 tests/reference/make_quant_fixtures.py"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import quant_ref as q  # noqa: E402

f32 = np.float32
rng = np.random.default_rng(1234)
cases = {
    "normal": rng.standard_normal(256).astype(f32) * f32(0.02),
    "zeros": np.zeros(128, dtype=f32),
    "outlier": np.concatenate([rng.standard_normal(63).astype(f32) * f32(0.01), [f32(3.5)],
                               rng.standard_normal(64).astype(f32) * f32(0.01)]).astype(f32),
    "extremes": np.array([65504.0, -65504.0, 1e-8, -1e-8] * 16, dtype=f32),
    "ties": np.array([(k % 17 - 8) / 8.0 for k in range(128)], dtype=f32),
}
out = {"dynamic_map": [float(v) for v in q.dynamic_map()], "cases": []}
m = q.dynamic_map()
for name, x in cases.items():
    absmax, codes = q.nf4_absmax_codes(x)
    case = {"name": name, "x": [float(v) for v in x],
            "q8_0": q.quantize_q8_0(x).hex(), "q4_0": q.quantize_q4_0(x).hex(),
            "nf4": q.pack_nf4(absmax, codes).hex()}
    for fmt, deq in (("q8_0", q.dequantize_q8_0), ("q4_0", q.dequantize_q4_0),
                     ("nf4", q.dequantize_nf4)):
        case[fmt + "_values"] = [float(v) for v in deq(bytes.fromhex(case[fmt]))]
    out["cases"].append(case)
# double quantisation over a tensor of 300 NF4 blocks (three 256-blocks, the last partial)
x = (rng.standard_normal(300 * 64) * np.repeat(rng.uniform(0.005, 0.05, 300), 64)).astype(f32)
absmax, codes = q.nf4_absmax_codes(x)
offset, dq_codes, absmax2, used = q.double_quantize(absmax, m)
out["double_quant"] = {"x": [float(v) for v in x], "offset": float(offset), "codes": dq_codes,
                       "absmax2": [float(v) for v in absmax2], "absmax": [float(v) for v in used],
                       "nf4": q.pack_nf4(used, codes).hex()}
path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "quant", "quant.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", os.path.normpath(path))
