"""Generate the forward-pass conformance fixtures in tests/fixtures/forward/.

Run from anywhere with Debian's interpreter (it has torch):

    /usr/bin/python3 tests/reference/make_fixtures.py

Output is deterministic (fixed seeds). For each model it writes an HF-style
model directory with small random weights plus expected.json holding float64
reference logits, then checks itself: the files are read back with an
independent reader and compared bit for bit, the logits are computed from
the read-back tensors, and the batched forward is compared against a naive
token-by-token one.
"""

import json
import math
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "fixtures", "forward")

SEQ_LENGTHS = [1, 7, 16]

# name -> (config kwargs, stored dtype, number of shards, metadata first, seed)
MODELS = {
    "gqa": (dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=101, max_position_embeddings=64,
                 rms_norm_eps=1e-5, rope_theta=10000.0),
            torch.float32, 1, False, 1001),
    "tied": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4,
                  vocab_size=50, max_position_embeddings=64,
                  rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=True),
             torch.float32, 1, False, 1002),
    "bf16": (dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=67, max_position_embeddings=64,
                  rms_norm_eps=1e-5, rope_theta=10000.0),
             torch.bfloat16, 1, False, 1003),
    "odd": (dict(hidden_size=48, intermediate_size=77, num_hidden_layers=2,
                 num_attention_heads=3, num_key_value_heads=1,
                 vocab_size=37, max_position_embeddings=64,
                 rms_norm_eps=1e-6, rope_theta=500000.0),
            torch.float16, 2, True, 1004),
}


def random_weights(config, dtype, gen):
    """Random weights scaled so activations and logits stay O(1).

    Linear maps ~ N(0, 1/in), q/k and the output head 1.5x that (so attention
    is far from uniform and logits are spread out), norm weights
    1 + 0.2 N(0, 1). The embedding is N(0, 1), or N(0, 1.5^2/hidden) when it
    doubles as the output head. Drawn in float32, then rounded to `dtype`.
    """
    out = {}
    for name, shape in llama_ref.tensor_shapes(config).items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            t = 1.0 + 0.2 * noise
        elif name == "model.embed_tokens.weight":
            if config["tie_word_embeddings"]:
                t = noise * (1.5 / math.sqrt(shape[1]))
            else:
                t = noise
        elif name.endswith(("q_proj.weight", "k_proj.weight",
                            "lm_head.weight")):
            t = noise * (1.5 / math.sqrt(shape[1]))
        else:
            t = noise / math.sqrt(shape[1])
        out[name] = t.to(dtype)
    return out


def bits(t):
    """Integer view of a tensor, for bit-exact comparison."""
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def check_read_back(written, read):
    assert set(written) == set(read), "tensor names differ after read back"
    for name, t in written.items():
        r = read[name]
        assert r.dtype == t.dtype and r.shape == t.shape, name
        assert torch.equal(bits(r), bits(t)), name


def format_expected(sequences):
    """expected.json text: valid JSON with one logits row per line."""
    parts = []
    for seq in sequences:
        rows = ",\n".join("      " + json.dumps(row) for row in seq["logits"])
        parts.append('    {"input_ids": %s,\n     "logits": [\n%s\n     ]}'
                     % (json.dumps(seq["input_ids"]), rows))
    return '{"sequences": [\n' + ",\n".join(parts) + "\n]}\n"


def attention_stats(probs_list):
    """Mean max attention probability vs. the uniform value, positions >= 3."""
    got, uniform = [], []
    for probs in probs_list:
        t = probs.shape[-1]
        for pos in range(3, t):
            row_max = probs[:, pos, :pos + 1].max(dim=-1).values
            got.append(row_max.mean().item())
            uniform.append(1.0 / (pos + 1))
    return sum(got) / len(got), sum(uniform) / len(uniform)


def make_one(name, kwargs, dtype, num_shards, metadata_first, seed):
    config = llama_ref.make_config(
        torch_dtype=llama_ref.CONFIG_DTYPES[dtype], **kwargs)
    gen = torch.Generator().manual_seed(seed)
    weights = random_weights(config, dtype, gen)

    directory = os.path.join(OUT_DIR, name)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    files = llama_ref.write_model_dir(directory, config, weights, num_shards,
                                      metadata_first)

    # Self-check 1: independent read back, bit-exact.
    read_config, read_weights = llama_ref.read_model_dir(directory)
    assert read_config == config
    check_read_back(weights, read_weights)
    if config["tie_word_embeddings"]:
        assert "lm_head.weight" not in read_weights

    sequences = []
    probs_list = []
    for length in SEQ_LENGTHS:
        ids = torch.randint(0, config["vocab_size"], (length,),
                            generator=gen).tolist()
        # Logits from exactly what is on disk.
        logits = llama_ref.forward(read_config, read_weights, ids, probs_list)
        # Self-check 2: the naive token-by-token implementation agrees.
        naive = llama_ref.naive_forward(read_config, read_weights, ids)
        diff = (logits - naive).abs().max().item()
        assert diff < 1e-10, "%s: naive forward differs by %g" % (name, diff)
        assert torch.isfinite(logits).all()
        sequences.append({"input_ids": ids, "logits": logits.tolist()})

    text = format_expected(sequences)
    reparsed = json.loads(text)
    assert reparsed == {"sequences": sequences}, "floats did not round trip"
    with open(os.path.join(directory, "expected.json"), "w") as f:
        f.write(text)

    all_logits = torch.cat([torch.tensor(s["logits"]) for s in sequences])
    max_p, uniform_p = attention_stats(probs_list)
    assert max_p > 2.0 * uniform_p, "attention too close to uniform"
    size = sum(os.path.getsize(os.path.join(directory, f))
               for f in os.listdir(directory))
    print("%-5s %-9s files=%s logits std=%.3f max|.|=%.3f "
          "attn max-prob %.3f (uniform %.3f) naive diff ok, %d bytes"
          % (name, config["torch_dtype"], ",".join(files),
             all_logits.std().item(), all_logits.abs().max().item(),
             max_p, uniform_p, size))


def main():
    torch.manual_seed(0)
    for name, (kwargs, dtype, shards, meta_first, seed) in MODELS.items():
        make_one(name, kwargs, dtype, shards, meta_first, seed)


if __name__ == "__main__":
    main()
