"""Generate the tree-LoRA conformance fixtures in tests/fixtures/tree/.

Run from anywhere with Debian's interpreter (it has torch):

    /usr/bin/python3 tests/reference/make_tree_fixtures.py

Output is deterministic (fixed seeds). Every fixture reuses the bytes of the
frozen base model and the batch of tests/fixtures/train/pretrain, adds a
random tree adapter (all tensors non-zero), routing.json (how it is trained)
and the float64 task loss, aux loss, total loss, hard leaf of every token
in every layer and the gradient of the total loss for every adapter tensor.
Everything is computed from the files as read back. Before writing the
expectations the script checks itself:
  * routing: every layer sends the batch's tokens to at least MIN_LEAVES
    leaves, and no token has |z| < MIN_ABS_Z at a node of its hard path
    (otherwise the adapter is redrawn with the next seed);
  * the grouped computation (tokens gathered per leaf) and, for hard
    routing, the dense one-hot computation equal a naive per-token loop
    (tree walked node by node, aux losses accumulated node by node):
    losses and all gradients to 1e-12;
  * autograd matches 5-point central finite differences of the total loss
    at FD_COORDS random coordinates of every tensor (relative error < 1e-6),
    no routing decision changing at any of the perturbed points;
  * soft routing with the router scaled by 1e4 (saturated) gives the same
    task loss as hard routing with gate "path" to 1e-9;
  * depth 0 (no router) equals train_ref's plain LoRA (the train/lora
    fixture's adapter) in loss and gradients to 1e-12, in every mode.
It also reports the float32 drift of the same losses and gradients, a guide
for the C++ tests' tolerances.
"""

import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import make_fixtures  # noqa: E402
import train_ref  # noqa: E402
import tree_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_DIR = os.path.join(ROOT, "fixtures", "train", "pretrain")
LORA_DIR = os.path.join(ROOT, "fixtures", "train", "lora")
OUT_DIR = os.path.join(ROOT, "fixtures", "tree")

HARDENING = 0.1
BALANCE = 0.05
MIN_LEAVES = 3        # distinct hard leaves per layer over the batch
MIN_ABS_Z = 1e-3      # |z| at every node of every token's hard path
MAX_RESEEDS = 100
FD_COORDS = 3         # random coordinates per adapter tensor
FD_H = 1e-3           # finite-difference step; no decision may change
SATURATE = 1e4        # router scale of the saturated soft == hard check

QV = ["q_proj", "v_proj"]
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
               "up_proj", "down_proj"]

# name -> (depth, r, lora_alpha, target_modules, gate, routing, first seed)
FIXTURES = {
    "hard_path": (2, 2, 4, QV, "path", "hard", 3001),
    "hard_unit": (2, 2, 4, QV, "unit", "hard", 3101),
    "soft": (2, 2, 4, QV, "path", "soft", 3201),
    "depth3_all": (3, 1, 2, ALL_LINEARS, "path", "hard", 3301),
}


def write_json(path, obj, indent=None):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def rel_max(got, want):
    """max |got - want| / max |want| (0 when both are all zero)."""
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    if scale == 0.0:
        return diff
    return diff / scale


# ---------------------------------------------------------------------------
# Routing conditions and adapter choice
# ---------------------------------------------------------------------------

def routing_stats(problem):
    """(distinct leaves per layer, smallest |z| on any hard path)."""
    with torch.no_grad():
        _, _, _, routes = problem.evaluate()
    used = [len(set(r.leaf.tolist())) for r in routes]
    min_z = min(r.path_z.abs().min().item() for r in routes)
    return used, min_z


def choose_adapter(config, weights, batch, spec, first_seed):
    """The first seed from first_seed on whose adapter routes well."""
    for seed in range(first_seed, first_seed + MAX_RESEEDS):
        adapter = tree_ref.random_tree_adapter(
            config, spec, torch.Generator().manual_seed(seed))
        problem = tree_ref.TreeProblem(config, weights, batch, adapter, spec)
        used, min_z = routing_stats(problem)
        if min(used) >= MIN_LEAVES and min_z >= MIN_ABS_Z:
            return seed, adapter
    raise AssertionError("no seed in %d tries routes well" % MAX_RESEEDS)


# ---------------------------------------------------------------------------
# Self-checks
# ---------------------------------------------------------------------------

def check_against(problem, result, impl):
    """Losses and gradients of `impl` vs the fast implementation's."""
    task, aux, loss, logits, routes, grads = result
    o_task, o_aux, o_loss, o_logits, o_routes, o_grads = problem.grads(impl)
    for got, want in zip(problem.leaves(o_routes), problem.leaves(routes)):
        assert torch.equal(got, want), "%s: leaves differ" % impl
    worst = max(abs(o_task - task).item() / abs(task).item(),
                abs(o_loss - loss).item() / abs(loss).item(),
                abs(o_aux - aux).item() / max(abs(aux).item(), 1e-300),
                rel_max(o_logits, logits))
    for name, g in grads.items():
        worst = max(worst, rel_max(o_grads[name], g))
    assert worst < 1e-12, "%s differs from the fast path: %g" % (impl, worst)
    return worst


def check_finite_differences(problem, grads, gen):
    worst, n_checked, n_zero = 0.0, 0, 0
    for name, g in grads.items():
        for _ in range(FD_COORDS):
            index = tuple(torch.randint(0, s, (1,), generator=gen).item()
                          for s in g.shape)
            ad = g[index].item()
            fd = problem.finite_difference(name, index, FD_H)
            if ad == 0.0:
                # A leaf that no token of the batch uses.
                assert fd == 0.0, (name, index, fd)
                n_zero += 1
                continue
            rel = abs(fd - ad) / max(abs(fd), abs(ad))
            assert rel < 1e-6, "%s%s: autograd %.12g fd %.12g rel %.3g" % (
                name, index, ad, fd, rel)
            worst = max(worst, rel)
            n_checked += 1
    return worst, n_checked, n_zero


def check_saturated(config, weights, batch, adapter, spec):
    """Soft routing with a saturated router == hard routing, gate path."""
    scaled = dict(adapter)
    for i in range(config["num_hidden_layers"]):
        for name in (tree_ref.ROUTER_WEIGHT % i, tree_ref.ROUTER_BIAS % i):
            scaled[name] = adapter[name].to(torch.float64) * SATURATE
    losses, min_z = [], []
    for routing in ("soft", "hard"):
        s = spec.replace(routing=routing, gate="path")
        problem = tree_ref.TreeProblem(config, weights, batch, scaled, s)
        with torch.no_grad():
            task, _, _, routes = problem.evaluate()
        losses.append(task.item())
        min_z.append(min(r.path_z.abs().min().item() for r in routes))
    diff = abs(losses[0] - losses[1]) / abs(losses[1])
    assert diff < 1e-9, "saturated soft != hard: %g (min |z| %s)" % (
        diff, min_z)
    return diff


def check_depth0():
    """tree_depth 0 == train_ref's LoRA (the train/lora fixture)."""
    config, weights = llama_ref.read_model_dir(LORA_DIR)
    adir = os.path.join(LORA_DIR, "adapter")
    with open(os.path.join(adir, "adapter_config.json")) as f:
        acfg = json.load(f)
    assert acfg["tree_depth"] == 0
    adapter = llama_ref.read_safetensors(
        os.path.join(adir, "adapter_model.safetensors"))
    with open(os.path.join(LORA_DIR, "batch.json")) as f:
        batch = json.load(f)
    ref = train_ref.Problem(config, weights, batch, adapter,
                            acfg["target_modules"],
                            acfg["lora_alpha"] / acfg["r"])
    loss, logits, grads = ref.grads()
    stored = train_ref.read_f64_safetensors(
        os.path.join(LORA_DIR, "expected.safetensors"))
    worst = abs(loss.item() - stored["loss"].item()) / abs(loss.item())
    for routing in ("hard", "soft"):
        for gate in ("path", "unit"):
            spec = tree_ref.TreeSpec(0, acfg["r"], acfg["lora_alpha"],
                                     acfg["target_modules"], gate, routing,
                                     HARDENING, BALANCE)
            problem = tree_ref.TreeProblem(config, weights, batch, adapter,
                                           spec)
            impls = ["dense", "naive"] + (["grouped"] if routing == "hard"
                                          else [])
            for impl in impls:
                task, aux, total, t_logits, _, t_grads = problem.grads(impl)
                assert aux.item() == 0.0 and total.item() == task.item()
                assert set(t_grads) == set(grads)
                worst = max(worst, abs(total - loss).item() / loss.item(),
                            rel_max(t_logits, logits))
                for name, g in grads.items():
                    worst = max(worst, rel_max(t_grads[name], g))
    assert worst < 1e-12, "depth 0 differs from train_ref LoRA: %g" % worst
    return worst


def float32_drift(config, weights, batch, adapter, spec, result):
    """Largest relative differences of a float32 run from the float64 one."""
    task, aux, loss, _, routes, grads = result
    problem = tree_ref.TreeProblem(config, weights, batch, adapter, spec,
                                   dtype=torch.float32)
    t32, a32, l32, _, r32, g32 = problem.grads()
    for got, want in zip(problem.leaves(r32), problem.leaves(routes)):
        assert torch.equal(got, want), "float32 routes differently"
    loss_err = max(abs(t32.double() - task).item() / abs(task).item(),
                   abs(a32.double() - aux).item() / abs(aux).item(),
                   abs(l32.double() - loss).item() / abs(loss).item())
    grad_err = max(rel_max(g32[n].double(), g) for n, g in grads.items())
    return loss_err, grad_err


# ---------------------------------------------------------------------------
# One fixture
# ---------------------------------------------------------------------------

def make_one(name, fixture, fd_gen):
    depth, r, alpha, targets, gate, routing, first_seed = fixture
    spec = tree_ref.TreeSpec(depth, r, alpha, targets, gate, routing,
                             HARDENING, BALANCE)
    # Built under a temporary name, renamed only once every check passed.
    final = os.path.join(OUT_DIR, name)
    directory = os.path.join(OUT_DIR, "." + name + ".tmp")
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    for fname in ("config.json", "model.safetensors", "batch.json"):
        shutil.copyfile(os.path.join(SRC_DIR, fname),
                        os.path.join(directory, fname))
    config, weights = llama_ref.read_model_dir(directory)
    with open(os.path.join(directory, "batch.json")) as f:
        batch = json.load(f)

    seed, adapter = choose_adapter(config, weights, batch, spec, first_seed)
    adir = os.path.join(directory, "adapter")
    os.makedirs(adir)
    write_json(os.path.join(adir, "adapter_config.json"),
               spec.adapter_config(), indent=2)
    llama_ref.write_safetensors(
        os.path.join(adir, "adapter_model.safetensors"),
        sorted(adapter.items()))
    read_adapter = llama_ref.read_safetensors(
        os.path.join(adir, "adapter_model.safetensors"))
    make_fixtures.check_read_back(adapter, read_adapter)
    with open(os.path.join(adir, "adapter_config.json")) as f:
        assert json.load(f) == spec.adapter_config()
    write_json(os.path.join(directory, "routing.json"),
               spec.routing_config())

    problem = tree_ref.TreeProblem(config, weights, batch, read_adapter,
                                   spec)
    used, min_z = routing_stats(problem)
    assert min(used) >= MIN_LEAVES and min_z >= MIN_ABS_Z, (used, min_z)
    result = problem.grads()
    task, aux, loss, logits, routes, grads = result
    assert aux.item() > 0.0 and loss.item() == (task + aux).item()
    if gate == "unit":
        assert all(bool((rt.gate == 1.0).all()) for rt in routes)
    impl_worst = check_against(problem, result, "naive")
    if routing == "hard":
        impl_worst = max(impl_worst, check_against(problem, result, "dense"))
    fd_worst, fd_n, fd_zero = check_finite_differences(problem, grads, fd_gen)
    sat = check_saturated(config, weights, batch, read_adapter, spec)
    f32_loss, f32_grad = float32_drift(config, weights, batch, read_adapter,
                                       spec, result)

    expected = [("loss_task", task.reshape(1)), ("loss_aux", aux.reshape(1)),
                ("loss", loss.reshape(1))]
    for i, route in enumerate(routes):
        expected.append(("leaf.%d" % i, route.leaf.to(torch.float64)))
    for i, route in enumerate(routes):
        expected.append(("z.%d" % i, route.z.detach()))
    expected.append(("logits", logits))
    expected += [("grad." + n, g) for n, g in sorted(grads.items())]
    path = os.path.join(directory, "expected.safetensors")
    train_ref.write_f64_safetensors(path, expected)
    back = train_ref.read_f64_safetensors(path)
    assert list(back) == [n for n, _ in expected]
    for n, t in expected:
        assert torch.equal(back[n], t), n
    assert {n[5:] for n in back if n.startswith("grad.")} == set(read_adapter)

    if os.path.isdir(final):
        shutil.rmtree(final)
    os.rename(directory, final)
    size = 0
    for dirpath, _, files in os.walk(final):
        size += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    counts = [torch.bincount(rt.leaf, minlength=spec.n_leaves).tolist()
              for rt in routes]
    n_params = sum(g.numel() for g in grads.values())
    print("%-10s seed %d params=%d loss=%.9f (task %.9f aux %.9f)"
          % (name, seed, n_params, loss.item(), task.item(), aux.item()))
    print("%-10s tokens per leaf %s, min |z| on paths %.3g; vs naive/dense "
          "%.1e; fd: %d coords worst rel %.1e (+%d exact zeros); "
          "saturated soft-hard %.1e; float32: losses %.1e grads %.1e; "
          "%d bytes"
          % ("", counts, min_z, impl_worst, fd_n, fd_worst, fd_zero, sat,
             f32_loss, f32_grad, size))
    return size


def main():
    torch.manual_seed(0)
    print("depth 0 == train_ref LoRA: worst rel %.1e" % check_depth0())
    fd_gen = torch.Generator().manual_seed(3900)
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for name, fixture in FIXTURES.items():
        total += make_one(name, fixture, fd_gen)
    print("total %d bytes" % total)


if __name__ == "__main__":
    main()
