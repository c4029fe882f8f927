"""Tree-routed LoRA reference (DESIGN.md section 2), built on train_ref.

A tree adapter of depth d keeps 2^d rank-r LoRA leaves per adapted linear,
stored stacked (A: (2^d r) x in, B: out x (2^d r); leaf j owns A rows and
B columns [j r, (j+1) r)), and one router per transformer block
(Wr: (2^d - 1) x hidden, br: (2^d - 1)) shared by every adapted linear of
that block. With d = 0 there is no router and the adapter is exactly a PEFT
LoRA of rank r.

Semantics pinned down here (and by tests/fixtures/tree):
  * router input xhat = the block's input_layernorm output (what q/k/v read);
    z = xhat Wr^T + br per token; sigma(z_n) = P(go right at node n).
  * nodes in heap order: root 0, children of n are 2n+1 (left), 2n+2 (right).
    Leaf j: bits of j from the most significant, 1 = right; the path visits
    n_0 = 0, n_{k+1} = 2 n_k + 1 + b_k (the leaf is heap node 2^d - 1 + j).
    p_j = prod_k sigma(z_{n_k})^{b_k} (1 - sigma(z_{n_k}))^{1 - b_k}.
  * hard routing: right iff z >= 0, leaf j*, gate g = p_{j*} ("path") or
    p_{j*} / stopgrad(p_{j*}) ("unit"); delta y = g s B_{j*} (A_{j*} x).
  * soft routing: delta y = sum_j p_j s B_j (A_j x) (the gate is unused).
  * aux per block (tokens = all B*T positions, the mask is ignored):
      hardening: h * mean of H(sigma(z_n)), H the binary entropy, over the
        (token, node) pairs of the hard paths (hard routing) or over all
        tokens and all 2^d - 1 nodes (soft routing);
      balance: lam * sum_n w_n * 2 (fR_n PR_n + fL_n PL_n), S_n = tokens
        whose hard path visits n, fR_n = fraction of S_n going right (no
        gradient), fL_n = 1 - fR_n, PR_n = mean over S_n of sigma(z_n),
        PL_n = 1 - PR_n, w_n = |S_n| / sum_m |S_m| (= |S_n| / (B T d));
        nodes no token visits contribute nothing. Hard paths in both modes.
    loss_aux = mean over the L blocks of (hardening + balance);
    loss = masked mean cross-entropy (train_ref) + loss_aux.
    d = 0: no nodes, loss_aux = 0.

Three implementations of the adapted linears are kept for cross-checking:
"grouped" (hard routing: tokens gathered per leaf, two small products per
leaf, scatter-add, as the C++ engine does), "dense" (one rank 2^d r product
whose rank chunks are scaled per token by the leaf coefficient: p_j for soft
routing, g for j = j* and 0 otherwise for hard routing) and "naive" (a
Python loop over tokens, the tree walked node by node with scalar dot
products, aux losses accumulated node by node).
"""

import math

import torch

import llama_ref
import train_ref

ROUTER_WEIGHT = "base_model.model.model.layers.%d.tree_router.weight"
ROUTER_BIAS = "base_model.model.model.layers.%d.tree_router.bias"


class TreeSpec:
    """Everything that defines a tree adapter and its training losses."""

    def __init__(self, depth, r, lora_alpha, target_modules, gate="path",
                 routing="hard", hardening=0.0, balance=0.0):
        assert gate in ("path", "unit") and routing in ("hard", "soft")
        self.depth = depth
        self.r = r
        self.lora_alpha = lora_alpha
        self.target_modules = tuple(target_modules)
        self.gate = gate
        self.routing = routing
        self.hardening = hardening
        self.balance = balance

    @property
    def scaling(self):
        return self.lora_alpha / self.r

    @property
    def n_leaves(self):
        return 1 << self.depth

    @property
    def n_nodes(self):
        return (1 << self.depth) - 1

    def replace(self, **kwargs):
        args = dict(depth=self.depth, r=self.r, lora_alpha=self.lora_alpha,
                    target_modules=self.target_modules, gate=self.gate,
                    routing=self.routing, hardening=self.hardening,
                    balance=self.balance)
        args.update(kwargs)
        return TreeSpec(**args)

    def adapter_config(self):
        """adapter_config.json (PEFT keys + tree_depth and gate)."""
        return {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "lora_dropout": 0.0,
            "bias": "none",
            "task_type": "CAUSAL_LM",
            "fan_in_fan_out": False,
            "tree_depth": self.depth,
            "gate": self.gate,
        }

    def routing_config(self):
        """routing.json: how the adapter is trained."""
        return {"routing": self.routing, "hardening": self.hardening,
                "balance": self.balance}


def leaf_path(j, depth):
    """[(node, bit), ...] from the root to leaf j."""
    out = []
    node = 0
    for k in range(depth):
        bit = (j >> (depth - 1 - k)) & 1
        out.append((node, bit))
        node = 2 * node + 1 + bit
    return out


def tree_adapter_shapes(config, spec):
    """Name -> shape of every tensor of a tree adapter."""
    shapes = train_ref.adapter_shapes(config, spec.n_leaves * spec.r,
                                      spec.target_modules)
    if spec.depth > 0:
        h = config["hidden_size"]
        for i in range(config["num_hidden_layers"]):
            shapes[ROUTER_WEIGHT % i] = [spec.n_nodes, h]
            shapes[ROUTER_BIAS % i] = [spec.n_nodes]
    return shapes


def random_tree_adapter(config, spec, gen, b_std=0.3, router_gain=2.0,
                        bias_std=0.3):
    """Stacked leaves as train_ref.random_adapter (A ~ U(+-1/sqrt(in)),
    B ~ N(0, b_std^2)), then per layer Wr ~ N(0, 1/hidden) * router_gain and
    br ~ N(0, bias_std^2); all F32, drawn in that order from `gen`."""
    out = train_ref.random_adapter(config, spec.n_leaves * spec.r,
                                   spec.target_modules, gen, b_std=b_std)
    if spec.depth > 0:
        h = config["hidden_size"]
        for i in range(config["num_hidden_layers"]):
            w = torch.randn(spec.n_nodes, h, generator=gen,
                            dtype=torch.float32)
            out[ROUTER_WEIGHT % i] = w * (router_gain / math.sqrt(h))
            out[ROUTER_BIAS % i] = torch.randn(
                spec.n_nodes, generator=gen, dtype=torch.float32) * bias_std
    assert {n: list(t.shape) for n, t in out.items()} == \
        tree_adapter_shapes(config, spec)
    return out


# ---------------------------------------------------------------------------
# Routing (vectorised)
# ---------------------------------------------------------------------------

def softplus(z):
    """log(1 + e^z), exact for every z (torch's has a linear cut-off)."""
    return torch.clamp(z, min=0.0) + torch.log1p(torch.exp(-z.abs()))


def binary_entropy_from_logit(z):
    """H(sigma(z)) = sigma(z) softplus(-z) + (1 - sigma(z)) softplus(z);
    the same value as -s log s - (1-s) log(1-s), finite when saturated."""
    s = torch.sigmoid(z)
    return s * softplus(-z) + (1.0 - s) * softplus(z)


class Route:
    """Routing of N tokens through one block's tree.

    z, sig: N x nodes; nodes, bits: N x d (the hard path); leaf: N;
    p: N x 2^d (every leaf's path probability); gate: N (hard gate).
    """

    def __init__(self, xhat, wr, br, spec, unit_denominator=None):
        n_tok = xhat.shape[0]
        d = spec.depth
        if d == 0:
            self.z = xhat.new_zeros(n_tok, 0)
        else:
            self.z = torch.nn.functional.linear(xhat, wr, br)
        self.sig = torch.sigmoid(self.z)
        node = torch.zeros(n_tok, dtype=torch.long)
        nodes, bits = [], []
        for _ in range(d):
            zk = self.z.gather(1, node[:, None]).squeeze(1)
            bit = (zk >= 0).long()
            nodes.append(node)
            bits.append(bit)
            node = 2 * node + 1 + bit
        self.nodes = torch.stack(nodes, 1) if d else \
            torch.zeros(n_tok, 0, dtype=torch.long)
        self.bits = torch.stack(bits, 1) if d else \
            torch.zeros(n_tok, 0, dtype=torch.long)
        self.leaf = node - spec.n_nodes
        # Every leaf's path probability (empty product = 1 at d = 0).
        cols = []
        for j in range(spec.n_leaves):
            pj = xhat.new_ones(n_tok)
            for n, b in leaf_path(j, d):
                pj = pj * (self.sig[:, n] if b else 1.0 - self.sig[:, n])
            cols.append(pj)
        self.p = torch.stack(cols, 1)
        # Hard gate, computed along the hard path (d factors per token).
        sig_path = self.sig.gather(1, self.nodes)
        p_star = torch.where(self.bits == 1, sig_path,
                             1.0 - sig_path).prod(1)
        self.p_star = p_star.detach()
        if spec.gate == "path":
            self.gate = p_star
        elif unit_denominator is None:
            self.gate = p_star / p_star.detach()
        else:
            self.gate = p_star / unit_denominator
        self.path_z = self.z.gather(1, self.nodes)

    def coefficients(self, spec):
        """N x 2^d: the weight of every leaf's LoRA for every token."""
        if spec.routing == "soft":
            return self.p
        onehot = torch.nn.functional.one_hot(
            self.leaf, spec.n_leaves).to(self.gate.dtype)
        return onehot * self.gate[:, None]

    def aux(self, spec):
        """hardening + balance of this block (0-d tensor)."""
        d = spec.depth
        if d == 0:
            return self.z.new_zeros(())
        n_tok = self.z.shape[0]
        ent = binary_entropy_from_logit(self.z)
        if spec.routing == "hard":
            hard = ent.gather(1, self.nodes).mean()
        else:
            hard = ent.mean()
        sig_path = self.sig.gather(1, self.nodes)
        total_visits = n_tok * d
        bal = self.z.new_zeros(())
        for n in range(spec.n_nodes):
            sel = self.nodes == n        # a token visits n at most once
            count = int(sel.sum())
            if count == 0:
                continue
            f_right = self.bits[sel].to(self.z.dtype).mean()
            p_right = sig_path[sel].mean()
            term = 2.0 * (f_right * p_right
                          + (1.0 - f_right) * (1.0 - p_right))
            bal = bal + (count / total_visits) * term
        return spec.hardening * hard + spec.balance * bal


def delta_grouped(x, a, b, route, spec):
    """Hard routing, x: N x in -> N x out: tokens gathered per leaf (a
    counting sort by leaf), two small products per leaf, scatter-add."""
    r = spec.r
    order = torch.argsort(route.leaf, stable=True)
    counts = torch.bincount(route.leaf, minlength=spec.n_leaves).tolist()
    out = x.new_zeros(x.shape[0], b.shape[0])
    start = 0
    for j, count in enumerate(counts):
        if count == 0:
            continue
        idx = order[start:start + count]
        start += count
        rows = x.index_select(0, idx)
        u = rows @ a[j * r:(j + 1) * r].T                      # count x r
        y = u @ b[:, j * r:(j + 1) * r].T                      # count x out
        y = y * (spec.scaling * route.gate.index_select(0, idx))[:, None]
        out = out.index_add(0, idx, y)
    return out


def delta_dense(x, a, b, route, spec):
    """One rank 2^d r LoRA whose rank chunks are scaled per token."""
    coef = route.coefficients(spec).repeat_interleave(spec.r, dim=1)
    u = (x @ a.T) * coef                                      # N x 2^d r
    return (u @ b.T) * spec.scaling


# ---------------------------------------------------------------------------
# Routing, LoRA and aux losses token by token (cross-check)
# ---------------------------------------------------------------------------

class NaiveRoute:
    """Per token: walk the tree with scalar dot products."""

    def __init__(self, xhat, wr, br, spec, unit_denominator=None):
        assert unit_denominator is None
        d = spec.depth
        self.tokens = []
        for t in range(xhat.shape[0]):
            x = xhat[t]
            zs = {}

            def z_of(n):
                if n not in zs:
                    zs[n] = (wr[n] * x).sum() + br[n]
                return zs[n]

            node, p, path = 0, None, []
            for _ in range(d):
                z = z_of(node)
                s = torch.sigmoid(z)
                bit = 1 if z.item() >= 0.0 else 0
                path.append((node, bit, s))
                factor = s if bit else 1.0 - s
                p = factor if p is None else p * factor
                node = 2 * node + 1 + bit
            leaf = node - spec.n_nodes
            if p is None:
                gate = xhat.new_ones(())
            elif spec.gate == "path":
                gate = p
            else:
                gate = p / p.detach()
            entry = {"leaf": leaf, "gate": gate, "path": path}
            if spec.routing == "soft":
                sig = [torch.sigmoid(z_of(n)) for n in range(spec.n_nodes)]
                probs = []
                for j in range(spec.n_leaves):
                    pj = xhat.new_ones(())
                    for n, b in leaf_path(j, d):
                        pj = pj * (sig[n] if b else 1.0 - sig[n])
                    probs.append(pj)
                entry["sig"] = sig
                entry["p"] = probs
            self.tokens.append(entry)
        self.leaf = torch.tensor([e["leaf"] for e in self.tokens])

    def delta(self, x, a, b, spec):
        r = spec.r
        rows = []
        for t, entry in enumerate(self.tokens):
            if spec.routing == "hard":
                j = entry["leaf"]
                y = b[:, j * r:(j + 1) * r] @ (a[j * r:(j + 1) * r] @ x[t])
                rows.append(entry["gate"] * spec.scaling * y)
            else:
                acc = None
                for j, pj in enumerate(entry["p"]):
                    y = b[:, j * r:(j + 1) * r] @ (
                        a[j * r:(j + 1) * r] @ x[t])
                    term = pj * spec.scaling * y
                    acc = term if acc is None else acc + term
                rows.append(acc)
        return torch.stack(rows)

    def aux(self, spec):
        if spec.depth == 0:
            return torch.zeros((), dtype=torch.float64)

        def entropy(s):
            return -(s * torch.log(s) + (1.0 - s) * torch.log(1.0 - s))

        ent_sum, ent_count = 0.0, 0
        visits = {}                       # node -> [(bit, sigma), ...]
        for entry in self.tokens:
            for n, bit, s in entry["path"]:
                visits.setdefault(n, []).append((bit, s))
                if spec.routing == "hard":
                    ent_sum = ent_sum + entropy(s)
                    ent_count += 1
            if spec.routing == "soft":
                for s in entry["sig"]:
                    ent_sum = ent_sum + entropy(s)
                    ent_count += 1
        total = sum(len(v) for v in visits.values())
        bal = 0.0
        for n in sorted(visits):
            pairs = visits[n]
            f_right = sum(bit for bit, _ in pairs) / len(pairs)
            p_right = sum(s for _, s in pairs) / len(pairs)
            bal = bal + len(pairs) / total * 2.0 * (
                f_right * p_right + (1.0 - f_right) * (1.0 - p_right))
        return spec.hardening * ent_sum / ent_count + spec.balance * bal


# ---------------------------------------------------------------------------
# Forward and loss
# ---------------------------------------------------------------------------

def tree_forward(config, weights, adapter, spec, inputs, impl=None,
                 unit_denominators=None):
    """(logits B x T x V, loss_aux 0-d, [route per layer]).

    impl: "grouped" (hard only), "dense" or "naive"; None = grouped for
    hard routing, dense for soft. Give float64 tensors for the reference.
    unit_denominators (gate "unit" only): per layer, N constants replacing
    stopgrad(p_{j*}) in the gate, so that the gate is an ordinary function
    of the parameters whose derivative at the point where the constants
    were taken is the gate's gradient (for finite differences).
    """
    if impl is None:
        impl = "grouped" if spec.routing == "hard" else "dense"
    assert impl in ("grouped", "dense", "naive")
    assert not (impl == "grouped" and spec.routing == "soft")
    h = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = h // n_heads
    eps = config["rms_norm_eps"]
    bsz, t = inputs.shape
    n_tok = bsz * t
    emb = weights["model.embed_tokens.weight"]
    dtype = emb.dtype
    cos, sin = llama_ref.rope_cos_sin(t, head_dim, float(config["rope_theta"]))
    cos, sin = cos.to(dtype), sin.to(dtype)
    mask = torch.zeros(t, t, dtype=dtype).masked_fill(
        torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))

    x = torch.nn.functional.embedding(inputs, emb)
    aux = emb.new_zeros(())
    routes = []
    for i in range(config["num_hidden_layers"]):
        p = "model.layers.%d." % i
        a = llama_ref.rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        xhat = a.reshape(n_tok, h)
        wr = adapter.get(ROUTER_WEIGHT % i)
        br = adapter.get(ROUTER_BIAS % i)
        route = (NaiveRoute if impl == "naive" else Route)(
            xhat, wr, br, spec,
            None if unit_denominators is None else unit_denominators[i])
        routes.append(route)
        aux = aux + route.aux(spec)

        def linear(module, inp, i=i, route=route):
            y = torch.nn.functional.linear(
                inp, weights[train_ref.base_name(i, module)])
            if module not in spec.target_modules:
                return y
            la = adapter[train_ref.lora_name(i, module, "A")]
            lb = adapter[train_ref.lora_name(i, module, "B")]
            flat = inp.reshape(n_tok, inp.shape[-1])
            if impl == "naive":
                delta = route.delta(flat, la, lb, spec)
            elif impl == "grouped":
                delta = delta_grouped(flat, la, lb, route, spec)
            else:
                delta = delta_dense(flat, la, lb, route, spec)
            return y + delta.view(bsz, t, -1)

        q = linear("q_proj", a).view(bsz, t, n_heads, head_dim)
        k = linear("k_proj", a).view(bsz, t, n_kv, head_dim)
        v = linear("v_proj", a).view(bsz, t, n_kv, head_dim)
        q = llama_ref.apply_rope(q, cos, sin)
        k = llama_ref.apply_rope(k, cos, sin)
        x = x + linear("o_proj", train_ref.causal_attention(q, k, v, mask))
        m = llama_ref.rms_norm(
            x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = linear("gate_proj", m)
        up = linear("up_proj", m)
        x = x + linear("down_proj", torch.nn.functional.silu(gate) * up)
    x = llama_ref.rms_norm(x, weights["model.norm.weight"], eps)
    head = emb if config["tie_word_embeddings"] else weights["lm_head.weight"]
    logits = torch.nn.functional.linear(x, head)
    return logits, aux / config["num_hidden_layers"], routes


class TreeProblem:
    """Frozen base + trainable tree adapter + one batch (train_ref format)."""

    def __init__(self, config, weights, batch, adapter, spec,
                 dtype=torch.float64):
        self.config = config
        self.spec = spec
        self.dtype = dtype
        self.weights = {n: t.to(dtype).clone() for n, t in weights.items()}
        self.adapter = {n: t.to(dtype).clone() for n, t in adapter.items()}
        self.inputs = torch.tensor(batch["inputs"], dtype=torch.long)
        self.targets = torch.tensor(batch["targets"], dtype=torch.long)
        self.mask = torch.tensor(batch["mask"], dtype=torch.long)

    def trainable(self):
        return {n: self.adapter[n] for n in sorted(self.adapter)}

    def evaluate(self, params=None, impl=None, unit_denominators=None):
        """(loss_task, loss_aux, logits, routes); params override tensors."""
        adapter = dict(self.adapter)
        if params:
            adapter.update(params)
        logits, aux, routes = tree_forward(self.config, self.weights,
                                           adapter, self.spec, self.inputs,
                                           impl, unit_denominators)
        task = train_ref.masked_cross_entropy(logits, self.targets,
                                              self.mask)
        return task, aux, logits, routes

    def leaves(self, routes):
        return [r.leaf.clone() for r in routes]

    def grads(self, impl=None):
        """(loss_task, loss_aux, loss, logits, routes, name -> gradient of
        the total loss)."""
        leaves = {n: t.detach().clone().requires_grad_(True)
                  for n, t in self.trainable().items()}
        task, aux, logits, routes = self.evaluate(leaves, impl)
        loss = task + aux
        names = list(leaves)
        gs = torch.autograd.grad(loss, [leaves[n] for n in names])
        return (task.detach(), aux.detach(), loss.detach(), logits.detach(),
                routes, dict(zip(names, gs)))

    def finite_difference(self, name, index, h):
        """5-point central difference of the total loss; asserts that no
        routing decision differs from the unperturbed one at any step.

        Gate "unit" is worth exactly 1 everywhere, so its gradient is not
        the derivative of the loss; it is the derivative of the loss with
        the gate's denominators p_{j*} frozen at the unperturbed point,
        which is what is differenced here."""
        base = self.trainable()[name]
        with torch.no_grad():
            _, _, _, routes = self.evaluate()
        ref = self.leaves(routes)
        denominators = None
        if self.spec.gate == "unit" and self.spec.routing == "hard":
            denominators = [r.p_star for r in routes]

        def loss_at(delta):
            p = base.detach().clone()
            p[index] += delta
            with torch.no_grad():
                task, aux, _, rs = self.evaluate({name: p}, None,
                                                 denominators)
            for got, want in zip(self.leaves(rs), ref):
                assert torch.equal(got, want), (
                    "routing decision flipped: %s%s delta %g"
                    % (name, index, delta))
            return (task + aux).item()

        return (8.0 * (loss_at(h) - loss_at(-h))
                - (loss_at(2 * h) - loss_at(-2 * h))) / (12.0 * h)
