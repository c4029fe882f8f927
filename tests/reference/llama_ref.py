"""Independent float64 reference for the Llama forward pass.

Contents:
  * a minimal safetensors writer and reader,
  * a writer for Hugging Face style model directories (config.json, single
    file or sharded safetensors with model.safetensors.index.json),
  * the Llama (HF LlamaForCausalLM conventions) forward pass, computed
    entirely in float64 from the exactly upcast stored weights,
  * a deliberately naive token-by-token forward with a KV cache and scalar
    loops for RoPE and attention, used only to cross-check the batched one.

Only torch and the Python standard library are used.
"""

import json
import math
import os
import struct

import numpy as np
import torch

# safetensors dtype name <-> torch dtype, and the little-endian numpy dtype
# used to serialise the raw bytes (bf16 is written through its int16 view).
ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
NUMPY_CODES = {"F32": "<f4", "F16": "<f2", "BF16": "<i2"}
ELEMENT_SIZE = {"F32": 4, "F16": 2, "BF16": 2}

# config.json "torch_dtype" strings.
CONFIG_DTYPES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

def tensor_to_bytes(t):
    """Raw little-endian bytes of a float32/float16/bfloat16 tensor."""
    name = ST_NAMES[t.dtype]
    t = t.contiguous()
    if name == "BF16":
        t = t.view(torch.int16)
    return t.numpy().astype(NUMPY_CODES[name]).tobytes()


def bytes_to_tensor(data, dtype_name, shape):
    """Inverse of tensor_to_bytes."""
    arr = np.frombuffer(data, dtype=NUMPY_CODES[dtype_name]).copy()
    arr = arr.astype(arr.dtype.newbyteorder("="))
    t = torch.from_numpy(arr)
    if dtype_name == "BF16":
        t = t.view(torch.bfloat16)
    return t.reshape(shape)


def write_safetensors(path, tensors, metadata_first=False):
    """Write tensors (a list of (name, tensor) pairs) to a safetensors file.

    Tensors are laid out back-to-back in the order given, which is also the
    order of the keys in the JSON header. The header is padded with spaces so
    that the data section starts at a multiple of 8 bytes. `metadata_first`
    puts "__metadata__" before the tensor entries instead of after them (both
    orders occur in real files; readers must accept either).
    """
    header = {}
    if metadata_first:
        header["__metadata__"] = {"format": "pt"}
    blobs = []
    offset = 0
    for name, t in tensors:
        blob = tensor_to_bytes(t)
        header[name] = {
            "dtype": ST_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    if not metadata_first:
        header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    return offset


def read_safetensors(path):
    """Read a safetensors file into an ordered dict name -> tensor.

    Strict: checks the header alignment, that every tensor's byte range
    matches its dtype and shape, and that the ranges tile the data section
    exactly with no gaps or overlaps.
    """
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0, "header not padded to 8 bytes"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    assert header.pop("__metadata__") == {"format": "pt"}
    out = {}
    ranges = []
    for name, info in header.items():
        dtype_name = info["dtype"]
        shape = info["shape"]
        begin, end = info["data_offsets"]
        count = 1
        for d in shape:
            count *= d
        assert end - begin == count * ELEMENT_SIZE[dtype_name], name
        ranges.append((begin, end))
        out[name] = bytes_to_tensor(data[begin:end], dtype_name, shape)
    ranges.sort()
    pos = 0
    for begin, end in ranges:
        assert begin == pos, "gap or overlap in data section"
        pos = end
    assert pos == len(data), "trailing bytes after the last tensor"
    return out


# ---------------------------------------------------------------------------
# Model directories
# ---------------------------------------------------------------------------

def make_config(hidden_size, intermediate_size, num_hidden_layers,
                num_attention_heads, num_key_value_heads, vocab_size,
                max_position_embeddings=64, rms_norm_eps=1e-5,
                rope_theta=10000.0, tie_word_embeddings=False,
                torch_dtype="float32"):
    """An HF-style config.json dictionary for LlamaForCausalLM."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "tie_word_embeddings": tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": torch_dtype,
    }


def tensor_shapes(config):
    """Name -> shape of every tensor a checkpoint for `config` holds."""
    h = config["hidden_size"]
    inter = config["intermediate_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = h // n_heads
    shapes = {"model.embed_tokens.weight": [config["vocab_size"], h]}
    for i in range(config["num_hidden_layers"]):
        p = "model.layers.%d." % i
        shapes[p + "input_layernorm.weight"] = [h]
        shapes[p + "self_attn.q_proj.weight"] = [n_heads * head_dim, h]
        shapes[p + "self_attn.k_proj.weight"] = [n_kv * head_dim, h]
        shapes[p + "self_attn.v_proj.weight"] = [n_kv * head_dim, h]
        shapes[p + "self_attn.o_proj.weight"] = [h, n_heads * head_dim]
        shapes[p + "post_attention_layernorm.weight"] = [h]
        shapes[p + "mlp.gate_proj.weight"] = [inter, h]
        shapes[p + "mlp.up_proj.weight"] = [inter, h]
        shapes[p + "mlp.down_proj.weight"] = [h, inter]
    shapes["model.norm.weight"] = [h]
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = [config["vocab_size"], h]
    return shapes


def write_config(directory, config):
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def write_model_dir(directory, config, weights, num_shards=1,
                    metadata_first=False):
    """Write config.json and the weights (name -> stored-dtype tensor).

    Tensors are written sorted by name, as the safetensors library does. With
    num_shards > 1 they are split into contiguous runs of roughly equal byte
    size, named model-0000k-of-0000n.safetensors, and indexed by
    model.safetensors.index.json (total_size = bytes of tensor data).
    """
    os.makedirs(directory, exist_ok=True)
    write_config(directory, config)
    items = sorted(weights.items())
    if num_shards == 1:
        write_safetensors(os.path.join(directory, "model.safetensors"),
                          items, metadata_first)
        return ["model.safetensors"]
    sizes = [len(tensor_to_bytes(t)) for _, t in items]
    total = sum(sizes)
    shards = [[] for _ in range(num_shards)]
    acc = 0
    for (name, t), size in zip(items, sizes):
        k = min(num_shards - 1, acc * num_shards // total)
        shards[k].append((name, t))
        acc += size
    assert all(shards), "a shard came out empty"
    files = []
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (k + 1, num_shards)
        write_safetensors(os.path.join(directory, fname), shard,
                          metadata_first)
        files.append(fname)
        for name, _ in shard:
            weight_map[name] = fname
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"),
              "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    return files


def read_model_dir(directory):
    """Read config.json and all weights of a directory written above."""
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if not os.path.exists(index_path):
        return config, read_safetensors(
            os.path.join(directory, "model.safetensors"))
    with open(index_path) as f:
        index = json.load(f)
    weights = {}
    total = 0
    for fname in sorted(set(index["weight_map"].values())):
        for name, t in read_safetensors(
                os.path.join(directory, fname)).items():
            assert index["weight_map"][name] == fname, name
            assert name not in weights, name
            weights[name] = t
            total += t.numel() * t.element_size()
    assert set(weights) == set(index["weight_map"])
    assert total == index["metadata"]["total_size"]
    return config, weights


# ---------------------------------------------------------------------------
# Forward pass (float64)
# ---------------------------------------------------------------------------

def upcast(weights):
    """Exact float64 copies of the stored weights."""
    return {name: t.to(torch.float64) for name, t in weights.items()}


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_cos_sin(n_pos, head_dim, theta):
    """cos/sin tables, n_pos x head_dim, HF rotate-half layout."""
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    inv_freq = 1.0 / theta ** (2.0 * i / head_dim)
    pos = torch.arange(n_pos, dtype=torch.float64)
    angles = pos[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x, cos, sin):
    """x: T x heads x head_dim; cos/sin: T x head_dim."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def causal_gqa_attention(q, k, v, probs_out=None):
    """q: T x H x D, k/v: T x KV x D -> T x H x D.

    Query head h reads kv head h // (H / KV).
    """
    t, n_heads, head_dim = q.shape
    group = n_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(head_dim)
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if probs_out is not None:
        probs_out.append(probs)
    return torch.einsum("hts,shd->thd", probs, v)


def forward(config, weights, input_ids, probs_out=None):
    """Logits (T x vocab, float64) for one sequence at positions 0..T-1.

    `weights` holds the stored tensors (any float dtype); they are upcast to
    float64 exactly. If `probs_out` is a list, each layer's attention
    probabilities (H x T x T) are appended to it.
    """
    w = upcast(weights)
    h = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = h // n_heads
    eps = config["rms_norm_eps"]
    t = len(input_ids)
    cos, sin = rope_cos_sin(t, head_dim, float(config["rope_theta"]))

    x = w["model.embed_tokens.weight"][torch.tensor(input_ids)]
    for i in range(config["num_hidden_layers"]):
        p = "model.layers.%d." % i
        a = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (a @ w[p + "self_attn.q_proj.weight"].T).view(t, n_heads, head_dim)
        k = (a @ w[p + "self_attn.k_proj.weight"].T).view(t, n_kv, head_dim)
        v = (a @ w[p + "self_attn.v_proj.weight"].T).view(t, n_kv, head_dim)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        attn = causal_gqa_attention(q, k, v, probs_out).reshape(t, h)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        m = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = m @ w[p + "mlp.gate_proj.weight"].T
        up = m @ w[p + "mlp.up_proj.weight"].T
        act = gate * torch.sigmoid(gate) * up
        x = x + act @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    if config["tie_word_embeddings"]:
        head = w["model.embed_tokens.weight"]
    else:
        head = w["lm_head.weight"]
    return x @ head.T


# ---------------------------------------------------------------------------
# Naive cross-check: one token at a time, KV cache, scalar loops
# ---------------------------------------------------------------------------

def naive_rope(vec, pos, theta):
    """Rotate one head vector (list of floats) by position `pos`."""
    d = len(vec)
    half = d // 2
    out = list(vec)
    for i in range(half):
        angle = pos * theta ** (-2.0 * i / d)
        c, s = math.cos(angle), math.sin(angle)
        x0, x1 = vec[i], vec[i + half]
        out[i] = x0 * c - x1 * s
        out[i + half] = x1 * c + x0 * s
    return out


def naive_forward(config, weights, input_ids):
    """Same result as forward(), computed token by token with a KV cache."""
    w = upcast(weights)
    h = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = h // n_heads
    group = n_heads // n_kv
    eps = config["rms_norm_eps"]
    theta = float(config["rope_theta"])
    n_layers = config["num_hidden_layers"]
    cache_k = [[] for _ in range(n_layers)]  # [layer][pos][kv head] -> list
    cache_v = [[] for _ in range(n_layers)]
    rows = []
    for pos, tok in enumerate(input_ids):
        x = w["model.embed_tokens.weight"][tok].clone()
        for i in range(n_layers):
            p = "model.layers.%d." % i
            a = rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = w[p + "self_attn.q_proj.weight"] @ a
            k = w[p + "self_attn.k_proj.weight"] @ a
            v = w[p + "self_attn.v_proj.weight"] @ a
            cache_k[i].append([
                naive_rope(k[j * head_dim:(j + 1) * head_dim].tolist(),
                           pos, theta)
                for j in range(n_kv)])
            cache_v[i].append([
                v[j * head_dim:(j + 1) * head_dim].tolist()
                for j in range(n_kv)])
            out = []
            for hd in range(n_heads):
                qh = naive_rope(q[hd * head_dim:(hd + 1) * head_dim].tolist(),
                                pos, theta)
                kv = hd // group
                scores = []
                for s in range(pos + 1):
                    ks = cache_k[i][s][kv]
                    dot = sum(qh[d] * ks[d] for d in range(head_dim))
                    scores.append(dot / math.sqrt(head_dim))
                top = max(scores)
                e = [math.exp(sc - top) for sc in scores]
                z = sum(e)
                acc = [0.0] * head_dim
                for s in range(pos + 1):
                    vs = cache_v[i][s][kv]
                    for d in range(head_dim):
                        acc[d] += e[s] / z * vs[d]
                out.extend(acc)
            out = torch.tensor(out, dtype=torch.float64)
            x = x + w[p + "self_attn.o_proj.weight"] @ out
            m = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            gate = w[p + "mlp.gate_proj.weight"] @ m
            up = w[p + "mlp.up_proj.weight"] @ m
            silu = [g / (1.0 + math.exp(-g)) for g in gate.tolist()]
            act = torch.tensor(silu, dtype=torch.float64) * up
            x = x + w[p + "mlp.down_proj.weight"] @ act
        x = rms_norm(x, w["model.norm.weight"], eps)
        if config["tie_word_embeddings"]:
            head = w["model.embed_tokens.weight"]
        else:
            head = w["lm_head.weight"]
        rows.append(head @ x)
    return torch.stack(rows)
