"""Training reference: batched Llama forward with PEFT LoRA, masked
cross-entropy, global-norm gradient clipping and AdamW.

Built on llama_ref (RMSNorm, RoPE tables, safetensors and model directory
I/O); the forward here is batched (B x T) and dtype-generic so that the same
code gives the float64 fixture reference and the float32 PyTorch-eager peer
benchmark (bench/pytorch_lora_train.py). make_train_fixtures.py checks it
against llama_ref.forward, which shares none of the attention code.

Legend: B = batch, T = time, C = hidden, V = vocab, H = query heads,
KV = key/value heads, G = H / KV, D = head_dim, r = LoRA rank.

Semantics pinned down here (and by the fixtures):
  * LoRA (PEFT, dropout 0, fan_in_fan_out false): for an adapted linear
    W (out x in), y = x W^T + s * (x A^T) B^T with A r x in, B out x r,
    s = lora_alpha / r.
  * loss = sum_{b,t} mask[b,t] * CE(logits[b,t], targets[b,t]) / sum(mask),
    every sequence at positions 0..T-1, causal attention inside it only.
  * clip: norm = L2 norm over all trainable gradients together;
    grads *= min(1, clip / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_).
  * AdamW (torch.optim.AdamW, amsgrad off, constant lr), step t = 1, 2, ...:
      p <- p * (1 - lr * wd)
      m <- b1 * m + (1 - b1) * g
      v <- b2 * v + (1 - b2) * g * g
      p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
"""

import json
import math
import struct

import numpy as np
import torch

import llama_ref

# The seven linear maps of a block, as PEFT's target_modules name them, and
# where they live inside model.layers.{i}.
LINEAR_MODULES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


# ---------------------------------------------------------------------------
# F64 safetensors (llama_ref's writer covers F32/F16/BF16 only)
# ---------------------------------------------------------------------------

def write_f64_safetensors(path, tensors):
    """Write (name, tensor) pairs as F64, same layout rules as llama_ref."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors:
        blob = t.detach().to(torch.float64).contiguous().numpy() \
            .astype("<f8").tobytes()
        header[name] = {"dtype": "F64", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_f64_safetensors(path):
    """Strict reader for files written by write_f64_safetensors."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    assert header.pop("__metadata__") == {"format": "pt"}
    out = {}
    pos = 0
    for name, info in header.items():
        assert info["dtype"] == "F64", name
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        assert begin == pos and end - begin == 8 * count, name
        pos = end
        arr = np.frombuffer(data[begin:end], dtype="<f8").astype(np.float64)
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    assert pos == len(data)
    return out


# ---------------------------------------------------------------------------
# Adapters (PEFT names)
# ---------------------------------------------------------------------------

def lora_name(layer, module, which):
    """PEFT tensor name; module is a target_modules entry, which 'A'/'B'."""
    return "base_model.model.model.layers.%d.%s.lora_%s.weight" % (
        layer, LINEAR_MODULES[module], which)


def base_name(layer, module):
    return "model.layers.%d.%s.weight" % (layer, LINEAR_MODULES[module])


def adapter_config(r, lora_alpha, target_modules):
    """adapter_config.json of a depth-0 (plain PEFT) adapter."""
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": list(target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "fan_in_fan_out": False,
        "tree_depth": 0,
        "gate": "path",
    }


def adapter_shapes(config, r, target_modules):
    """PEFT name -> shape of every tensor of an adapter."""
    shapes = llama_ref.tensor_shapes(config)
    out = {}
    for i in range(config["num_hidden_layers"]):
        for module in target_modules:
            n_out, n_in = shapes[base_name(i, module)]
            out[lora_name(i, module, "A")] = [r, n_in]
            out[lora_name(i, module, "B")] = [n_out, r]
    return out


def random_adapter(config, r, target_modules, gen, b_std=0.3,
                   dtype=torch.float32):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's Kaiming-uniform bound) and
    B ~ N(0, b_std^2); with b_std = 0 this is PEFT's initialisation."""
    out = {}
    for name, shape in adapter_shapes(config, r, target_modules).items():
        if ".lora_A." in name:
            bound = 1.0 / math.sqrt(shape[1])
            t = (torch.rand(shape, generator=gen, dtype=torch.float32)
                 * 2.0 - 1.0) * bound
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float32) * b_std
        out[name] = t.to(dtype)
    return out


def adapter_pairs(config, adapter, target_modules):
    """Base weight name -> (A, B) for model_logits."""
    pairs = {}
    for i in range(config["num_hidden_layers"]):
        for module in target_modules:
            pairs[base_name(i, module)] = (adapter[lora_name(i, module, "A")],
                                           adapter[lora_name(i, module, "B")])
    return pairs


def merge_adapter(config, weights, adapter, target_modules, scaling):
    """Base weights with W + s * B A folded in (float64)."""
    merged = dict(weights)
    for name, (a, b) in adapter_pairs(config, adapter,
                                      target_modules).items():
        merged[name] = (weights[name].to(torch.float64)
                        + scaling * b.to(torch.float64) @ a.to(torch.float64))
    return merged


# ---------------------------------------------------------------------------
# Batched forward (any float dtype; every tensor must share it)
# ---------------------------------------------------------------------------

def causal_attention(q, k, v, mask):
    """q: B x T x H x D, k/v: B x T x KV x D, mask: T x T (additive).

    Returns B x T x (H*D).

    Query head h reads kv head h // G. Computed per (sequence, kv head) as
    2-D matrix products over the G query heads that share the kv head: the
    CPU bmm of Debian's torch 1.13 runs float32 at about 1 GFLOP/s, while a
    3-D @ 2-D matmul folds into one mm (OpenBLAS sgemm), backward included.
    """
    bsz, t, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    group = n_heads // n_kv
    q = q.view(bsz, t, n_kv, group, head_dim)
    q = q.permute(0, 2, 3, 1, 4).contiguous()                   # B,KV,G,T,D
    rows = []
    for b in range(bsz):
        heads = []
        for j in range(n_kv):
            kj = k[b, :, j, :]                                        # T,D
            vj = v[b, :, j, :]                                        # T,D
            scores = q[b, j] @ kj.T / math.sqrt(head_dim) + mask      # G,T,T
            probs = torch.softmax(scores, dim=-1)
            heads.append(probs @ vj)                                  # G,T,D
        out = torch.stack(heads)                                    # KV,G,T,D
        rows.append(out.permute(2, 0, 1, 3).reshape(t, n_heads * head_dim))
    return torch.stack(rows)                                          # B,T,H*D


def model_logits(config, weights, inputs, lora=None, scaling=1.0):
    """Logits B x T x V for token ids `inputs` (B x T LongTensor).

    `weights`: HF name -> tensor, `lora`: base weight name -> (A, B) as made
    by adapter_pairs. No upcasting: give float64 tensors for the reference.
    """
    h = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = h // n_heads
    eps = config["rms_norm_eps"]
    bsz, t = inputs.shape
    emb = weights["model.embed_tokens.weight"]
    dtype = emb.dtype
    cos, sin = llama_ref.rope_cos_sin(t, head_dim, float(config["rope_theta"]))
    cos, sin = cos.to(dtype), sin.to(dtype)                           # T,D
    mask = torch.zeros(t, t, dtype=dtype).masked_fill(
        torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    lora = lora or {}

    def linear(name, x):
        y = torch.nn.functional.linear(x, weights[name])
        if name in lora:
            a, b = lora[name]
            y = y + torch.nn.functional.linear(
                torch.nn.functional.linear(x, a), b) * scaling
        return y

    x = torch.nn.functional.embedding(inputs, emb)                    # B,T,C
    for i in range(config["num_hidden_layers"]):
        p = "model.layers.%d." % i
        a = llama_ref.rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = linear(p + "self_attn.q_proj.weight", a).view(bsz, t, n_heads,
                                                           head_dim)
        k = linear(p + "self_attn.k_proj.weight", a).view(bsz, t, n_kv,
                                                           head_dim)
        v = linear(p + "self_attn.v_proj.weight", a).view(bsz, t, n_kv,
                                                           head_dim)
        q = llama_ref.apply_rope(q, cos, sin)
        k = llama_ref.apply_rope(k, cos, sin)
        x = x + linear(p + "self_attn.o_proj.weight",
                       causal_attention(q, k, v, mask))
        m = llama_ref.rms_norm(
            x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = linear(p + "mlp.gate_proj.weight", m)
        up = linear(p + "mlp.up_proj.weight", m)
        x = x + linear(p + "mlp.down_proj.weight",
                       torch.nn.functional.silu(gate) * up)
    x = llama_ref.rms_norm(x, weights["model.norm.weight"], eps)
    head = emb if config["tie_word_embeddings"] else weights["lm_head.weight"]
    return torch.nn.functional.linear(x, head)                        # B,T,V


def masked_cross_entropy(logits, targets, mask):
    """sum(mask * CE) / sum(mask); logits B x T x V, targets/mask B x T."""
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)         # B,T
    mask = mask.to(logits.dtype)
    return (nll * mask).sum() / mask.sum()


# ---------------------------------------------------------------------------
# A training problem: frozen tensors + trainable tensors + one batch
# ---------------------------------------------------------------------------

class Problem:
    """Either full training (adapter None: every weight trainable) or LoRA
    training (base frozen, adapter tensors trainable).

    `weights` / `adapter` are converted to `dtype` exactly (float64 upcast
    of the stored values for the reference).
    """

    def __init__(self, config, weights, batch, adapter=None,
                 target_modules=(), scaling=1.0, dtype=torch.float64):
        self.config = config
        self.dtype = dtype
        self.weights = {n: t.to(dtype).clone() for n, t in weights.items()}
        self.adapter = None
        if adapter is not None:
            self.adapter = {n: t.to(dtype).clone() for n, t in adapter.items()}
        self.target_modules = tuple(target_modules)
        self.scaling = scaling
        self.inputs = torch.tensor(batch["inputs"], dtype=torch.long)
        self.targets = torch.tensor(batch["targets"], dtype=torch.long)
        self.mask = torch.tensor(batch["mask"], dtype=torch.long)

    def trainable(self):
        """name -> tensor of the trainable parameters (live, sorted names)."""
        src = self.weights if self.adapter is None else self.adapter
        return {n: src[n] for n in sorted(src)}

    def loss_and_logits(self, params=None):
        """Loss (0-d) and logits; `params` overrides trainable tensors."""
        weights = dict(self.weights)
        adapter = None if self.adapter is None else dict(self.adapter)
        if params:
            (weights if adapter is None else adapter).update(params)
        lora = None
        if adapter is not None:
            lora = adapter_pairs(self.config, adapter, self.target_modules)
        logits = model_logits(self.config, weights, self.inputs, lora,
                              self.scaling)
        return masked_cross_entropy(logits, self.targets, self.mask), logits

    def grads(self):
        """(loss, logits, name -> gradient) at the current parameters."""
        leaves = {n: t.detach().clone().requires_grad_(True)
                  for n, t in self.trainable().items()}
        loss, logits = self.loss_and_logits(leaves)
        names = list(leaves)
        gs = torch.autograd.grad(loss, [leaves[n] for n in names])
        return loss.detach(), logits.detach(), dict(zip(names, gs))


# ---------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------

def clip_grad_norm(grads, max_norm):
    """In place, as torch.nn.utils.clip_grad_norm_ (L2). Returns the norm
    before clipping."""
    norm = torch.norm(torch.stack([torch.norm(g, 2.0)
                                   for g in grads.values()]), 2.0)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads.values():
        g.mul_(coef)
    return norm.item()


class AdamW:
    """torch.optim.AdamW (amsgrad off, maximize off), written out."""

    def __init__(self, lr, betas, eps, weight_decay):
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.wd = weight_decay
        self.t = 0
        self.m = {}
        self.v = {}

    def step(self, params, grads):
        self.t += 1
        bc1 = 1.0 - self.beta1 ** self.t
        bc2 = 1.0 - self.beta2 ** self.t
        for name, p in params.items():
            g = grads[name]
            if name not in self.m:
                self.m[name] = torch.zeros_like(p)
                self.v[name] = torch.zeros_like(p)
            m, v = self.m[name], self.v[name]
            p.mul_(1.0 - self.lr * self.wd)
            m.mul_(self.beta1).add_(g, alpha=1.0 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bc1)


def train(problem, opt, n_steps):
    """n_steps of loss -> grads -> clip -> AdamW on `problem`, in place.

    Returns (losses before each step, pre-clip grad norms, loss after the
    last step). opt: dict with lr, betas, eps, weight_decay, grad_clip.
    """
    adamw = AdamW(opt["lr"], opt["betas"], opt["eps"], opt["weight_decay"])
    losses, norms = [], []
    for _ in range(n_steps):
        loss, _, grads = problem.grads()
        losses.append(loss.item())
        norms.append(clip_grad_norm(grads, opt["grad_clip"]))
        with torch.no_grad():
            adamw.step(problem.trainable(), grads)
    with torch.no_grad():
        final = problem.loss_and_logits()[0].item()
    return losses, norms, final


def train_with_torch_optim(problem, opt, n_steps):
    """Same as train(), with torch.optim.AdamW and clip_grad_norm_ (check)."""
    params = problem.trainable()
    for p in params.values():
        p.requires_grad_(True)
    optim = torch.optim.AdamW(list(params.values()), lr=opt["lr"],
                              betas=tuple(opt["betas"]), eps=opt["eps"],
                              weight_decay=opt["weight_decay"])
    losses = []
    for _ in range(n_steps):
        optim.zero_grad()
        loss, _ = problem.loss_and_logits()
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(list(params.values()),
                                       opt["grad_clip"])
        optim.step()
    for p in params.values():
        p.requires_grad_(False)
    return losses


# ---------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------

def finite_difference(problem, name, index, h=1e-4):
    """d loss / d param[name][index] by the 5-point central stencil."""
    base = problem.trainable()[name]

    def loss_at(delta):
        p = base.detach().clone()
        p[index] += delta
        with torch.no_grad():
            return problem.loss_and_logits({name: p})[0].item()

    return (8.0 * (loss_at(h) - loss_at(-h))
            - (loss_at(2 * h) - loss_at(-2 * h))) / (12.0 * h)
