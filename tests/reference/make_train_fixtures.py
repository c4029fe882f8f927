"""Generate the training conformance fixtures in tests/fixtures/train/.

Run from anywhere with Debian's interpreter (it has torch):

    /usr/bin/python3 tests/reference/make_train_fixtures.py

Output is deterministic (fixed seeds). Each fixture is a loadable model
directory (plus an adapter for the LoRA ones), one batch, the float64 loss,
logits and gradient of every trainable tensor for that batch, and the losses
of ten clipped AdamW steps on it. Everything is computed from the files as
read back. Before writing the expectations the script checks itself:
  * the batched training forward matches llama_ref.forward (per sequence,
    LoRA merged into the base weights) to 1e-12;
  * the masked loss matches a scalar loop over the logits;
  * autograd gradients match 5-point central finite differences on random
    coordinates of every trainable tensor (relative error < 1e-6);
  * LoRA: dA = s B^T dW and dB = s dW A^T, dW the gradient of the merged
    weight; tied: the embedding gradient equals the sum of the embedding and
    head gradients of the same model untied;
  * the hand-written clip + AdamW loop gives the same losses as
    torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW.
It also reports how far the same gradients and ten steps drift in float32
(largest |g32 - g64| / max|g64| over the tensors, largest relative loss
difference over the steps), a guide for the C++ tests' tolerances.
"""

import json
import math
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import make_fixtures  # noqa: E402
import train_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "fixtures", "train")

BASE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=61,
            max_position_embeddings=32, rms_norm_eps=1e-5,
            rope_theta=10000.0)
BASE_SEED = 2001       # weights of the untied model (pretrain, lora, lora_all)
TIED_SEED = 2002       # weights of the tied model
BATCH_SEED = 2100
BATCH, SEQ = 2, 9
PROMPT = 3             # targets 0..PROMPT-1 of sequence 0 are masked out

OPTIMIZER = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8,
             "weight_decay": 0.1, "grad_clip": 1.0}
N_STEPS = 10
FD_COORDS = 3          # random coordinates per trainable tensor

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
               "up_proj", "down_proj"]

# name -> (tied, LoRA (target_modules, r, lora_alpha) or None, adapter seed)
FIXTURES = {
    "pretrain": (False, None, None),
    "pretrain_tied": (True, None, None),
    "lora": (False, (["q_proj", "v_proj"], 4, 8), 2003),
    "lora_all": (False, (ALL_LINEARS, 2, 6), 2004),
}


def make_batch():
    """B sequences of T+1 random ids; inputs/targets are the shifted views."""
    gen = torch.Generator().manual_seed(BATCH_SEED)
    seqs = torch.randint(0, BASE["vocab_size"], (BATCH, SEQ + 1),
                         generator=gen)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, :PROMPT] = 0
    return {"inputs": seqs[:, :-1].tolist(), "targets": seqs[:, 1:].tolist(),
            "mask": mask.tolist()}


def write_json(path, obj, indent=None):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def batch_text(batch):
    """batch.json with one sequence per line."""
    parts = []
    for key in ("inputs", "targets", "mask"):
        rows = ",\n".join("  " + json.dumps(r) for r in batch[key])
        parts.append(' "%s": [\n%s\n ]' % (key, rows))
    return "{\n" + ",\n".join(parts) + "\n}\n"


# ---------------------------------------------------------------------------
# Self-checks
# ---------------------------------------------------------------------------

def check_forward(problem, logits, loss):
    """Batched training forward vs llama_ref.forward; loss vs scalar loop."""
    weights = problem.weights
    if problem.adapter is not None:
        weights = train_ref.merge_adapter(problem.config, weights,
                                          problem.adapter,
                                          problem.target_modules,
                                          problem.scaling)
    worst = 0.0
    for b in range(BATCH):
        ref = llama_ref.forward(problem.config, weights,
                                problem.inputs[b].tolist())
        worst = max(worst, (ref - logits[b]).abs().max().item())
    assert worst < 1e-12, "training forward differs from llama_ref: %g" % worst

    total, count = 0.0, 0
    for b in range(BATCH):
        for t in range(SEQ):
            if problem.mask[b, t]:
                row = logits[b, t].tolist()
                top = max(row)
                lse = top + math.log(sum(math.exp(x - top) for x in row))
                total += lse - row[problem.targets[b, t].item()]
                count += 1
    loop = total / count
    assert abs(loop - loss) < 1e-13 * abs(loss), (loop, loss)
    return worst


def check_finite_differences(problem, grads, gen):
    """Relative error of autograd vs finite differences at random coordinates.

    Coordinates are drawn uniformly from each tensor. A gradient that is
    exactly zero (an embedding row of a token absent from the batch) must
    come out exactly zero from the finite difference too.
    """
    worst, n_checked, n_zero = 0.0, 0, 0
    for name, g in grads.items():
        for _ in range(FD_COORDS):
            index = tuple(torch.randint(0, s, (1,), generator=gen).item()
                          for s in g.shape)
            ad = g[index].item()
            fd = train_ref.finite_difference(problem, name, index)
            if ad == 0.0:
                assert fd == 0.0, (name, index, fd)
                n_zero += 1
                continue
            rel = abs(fd - ad) / max(abs(fd), abs(ad))
            assert rel < 1e-6, "%s%s: autograd %.12g fd %.12g rel %.3g" % (
                name, index, ad, fd, rel)
            worst = max(worst, rel)
            n_checked += 1
    return worst, n_checked, n_zero


def check_lora_identity(problem, grads):
    """dA = s B^T dW, dB = s dW A^T with dW the merged weight's gradient."""
    merged = train_ref.merge_adapter(problem.config, problem.weights,
                                     problem.adapter, problem.target_modules,
                                     problem.scaling)
    pairs = train_ref.adapter_pairs(problem.config, problem.adapter,
                                    problem.target_modules)
    leaves = {n: merged[n].clone().requires_grad_(True) for n in pairs}
    merged.update(leaves)
    logits = train_ref.model_logits(problem.config, merged, problem.inputs)
    loss = train_ref.masked_cross_entropy(logits, problem.targets,
                                          problem.mask)
    names = list(leaves)
    dws = dict(zip(names, torch.autograd.grad(loss, [leaves[n]
                                                     for n in names])))
    worst = 0.0
    s = problem.scaling
    for i in range(problem.config["num_hidden_layers"]):
        for module in problem.target_modules:
            a, b = pairs[train_ref.base_name(i, module)]
            dw = dws[train_ref.base_name(i, module)]
            for which, want in (("A", s * b.T @ dw), ("B", s * dw @ a.T)):
                got = grads[train_ref.lora_name(i, module, which)]
                err = ((got - want).abs().max() / want.abs().max()).item()
                worst = max(worst, err)
    assert worst < 1e-12, "LoRA gradient identity off by %g" % worst
    return worst


def check_tied(problem, grads):
    """Tied embedding gradient = embedding-use + head gradient, untied."""
    config = dict(problem.config, tie_word_embeddings=False)
    emb = problem.weights["model.embed_tokens.weight"]
    weights = dict(problem.weights)
    weights["lm_head.weight"] = emb.clone()
    leaves = {n: weights[n].clone().requires_grad_(True)
              for n in ("model.embed_tokens.weight", "lm_head.weight")}
    weights.update(leaves)
    logits = train_ref.model_logits(config, weights, problem.inputs)
    loss = train_ref.masked_cross_entropy(logits, problem.targets,
                                          problem.mask)
    g_emb, g_head = torch.autograd.grad(loss, list(leaves.values()))
    want = g_emb + g_head
    got = grads["model.embed_tokens.weight"]
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < 1e-12, "tied gradient off by %g" % err
    assert g_emb.abs().max() > 0 and g_head.abs().max() > 0
    return err


# ---------------------------------------------------------------------------
# One fixture
# ---------------------------------------------------------------------------

def make_problem(config, weights, batch, adapter, lora, dtype):
    if lora is None:
        return train_ref.Problem(config, weights, batch, dtype=dtype)
    targets, r, alpha = lora
    return train_ref.Problem(config, weights, batch, adapter, targets,
                             alpha / r, dtype=dtype)


def make_one(name, tied, lora, adapter_seed, batch, fd_gen):
    config = llama_ref.make_config(tie_word_embeddings=tied, **BASE)
    gen = torch.Generator().manual_seed(TIED_SEED if tied else BASE_SEED)
    weights = make_fixtures.random_weights(config, torch.float32, gen)

    directory = os.path.join(OUT_DIR, name)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    llama_ref.write_model_dir(directory, config, weights)
    read_config, read_weights = llama_ref.read_model_dir(directory)
    assert read_config == config
    make_fixtures.check_read_back(weights, read_weights)

    read_adapter = None
    if lora is not None:
        targets, r, alpha = lora
        adapter = train_ref.random_adapter(
            config, r, targets, torch.Generator().manual_seed(adapter_seed))
        adir = os.path.join(directory, "adapter")
        os.makedirs(adir)
        write_json(os.path.join(adir, "adapter_config.json"),
                   train_ref.adapter_config(r, alpha, targets), indent=2)
        llama_ref.write_safetensors(
            os.path.join(adir, "adapter_model.safetensors"),
            sorted(adapter.items()))
        read_adapter = llama_ref.read_safetensors(
            os.path.join(adir, "adapter_model.safetensors"))
        make_fixtures.check_read_back(adapter, read_adapter)
        with open(os.path.join(adir, "adapter_config.json")) as f:
            assert json.load(f)["r"] == r

    with open(os.path.join(directory, "batch.json"), "w") as f:
        f.write(batch_text(batch))
    with open(os.path.join(directory, "batch.json")) as f:
        assert json.load(f) == batch

    # Loss, logits, gradients (float64, from the read-back files).
    problem = make_problem(read_config, read_weights, batch, read_adapter,
                           lora, torch.float64)
    loss, logits, grads = problem.grads()
    worst_fwd = check_forward(problem, logits, loss.item())
    fd_worst, fd_n, fd_zero = check_finite_differences(problem, grads, fd_gen)
    extra = ""
    if lora is not None:
        extra = " lora-identity %.1e" % check_lora_identity(problem, grads)
    if tied:
        extra = " tied-sum %.1e" % check_tied(problem, grads)

    expected = [("loss", loss.reshape(1)), ("logits", logits)]
    expected += [("grad." + n, g) for n, g in sorted(grads.items())]
    path = os.path.join(directory, "expected.safetensors")
    train_ref.write_f64_safetensors(path, expected)
    back = train_ref.read_f64_safetensors(path)
    assert list(back) == [n for n, _ in expected]
    for n, t in expected:
        assert torch.equal(back[n], t), n
    # Every trainable tensor has a gradient and nothing else does.
    names = set(read_weights if lora is None else read_adapter)
    assert {n[5:] for n in back if n.startswith("grad.")} == names

    # Ten AdamW steps, float64; checked against torch.optim; float32 drift.
    losses, norms, final = train_ref.train(
        make_problem(read_config, read_weights, batch, read_adapter, lora,
                     torch.float64), OPTIMIZER, N_STEPS)
    assert losses[0] == loss.item()
    torch_losses = train_ref.train_with_torch_optim(
        make_problem(read_config, read_weights, batch, read_adapter, lora,
                     torch.float64), OPTIMIZER, N_STEPS)
    optim_diff = max(abs(a - b) / abs(a) for a, b in zip(losses, torch_losses))
    assert optim_diff < 1e-12, "AdamW differs from torch.optim: %g" % (
        optim_diff)
    f32_losses, _, _ = train_ref.train(
        make_problem(read_config, read_weights, batch, read_adapter, lora,
                     torch.float32), OPTIMIZER, N_STEPS)
    f32_drift = max(abs(a - b) / abs(a) for a, b in zip(losses, f32_losses))
    _, _, f32_grads = make_problem(read_config, read_weights, batch,
                                   read_adapter, lora, torch.float32).grads()
    f32_grad_err = max(((f32_grads[n].double() - g).abs().max()
                        / g.abs().max()).item() for n, g in grads.items())
    assert losses[-1] < losses[0], "training did not reduce the loss"

    steps = {"optimizer": OPTIMIZER, "losses": losses, "grad_norms": norms,
             "final_loss": final}
    write_json(os.path.join(directory, "steps.json"), steps, indent=1)
    with open(os.path.join(directory, "steps.json")) as f:
        assert json.load(f) == steps, "floats did not round trip"

    size = 0
    for dirpath, _, files in os.walk(directory):
        size += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    n_params = sum(g.numel() for g in grads.values())
    clipped = sum(n > OPTIMIZER["grad_clip"] for n in norms)
    print("%-13s params=%-6d loss=%.6f fwd-vs-llama_ref %.1e "
          "fd: %d coords worst rel %.1e (+%d exact zeros)%s"
          % (name, n_params, loss.item(), worst_fwd, fd_n, fd_worst, fd_zero,
             extra))
    print("%-13s steps: loss %.6f -> %.6f (after 10: %.6f), grad norm "
          "%.3f -> %.3f, clipped %d/%d, vs torch.optim %.1e, "
          "float32: grads %.1e, losses %.1e, %d bytes"
          % ("", losses[0], losses[-1], final, norms[0], norms[-1], clipped,
             N_STEPS, optim_diff, f32_grad_err, f32_drift, size))
    return size


def main():
    torch.manual_seed(0)
    batch = make_batch()
    fd_gen = torch.Generator().manual_seed(2200)
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for name, (tied, lora, seed) in FIXTURES.items():
        total += make_one(name, tied, lora, seed, batch, fd_gen)
    print("total %d bytes" % total)


if __name__ == "__main__":
    main()
