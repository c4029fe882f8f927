#!/usr/bin/python3
"""Peer benchmark: LoRA training in float32 PyTorch eager (the one to beat).

A Llama with random weights (N(0, 0.02^2), norms 1, nothing read from disk)
is frozen (requires_grad False); PEFT-style LoRA adapters (A Kaiming-uniform,
B zero, y = W x + (alpha / r) B A x) are trained with torch.optim.AdamW after
clipping the global gradient norm to 1, on random token batches (next-token
cross-entropy over all positions). The model code is the batched forward of
tests/reference/train_ref.py run in float32 (F.linear, batched matmul
attention), the same computation a PEFT + HF transformers run does.

Use Debian's interpreter (it has torch 1.13):

    /usr/bin/python3 bench/pytorch_lora_train.py --preset tiny --steps 4
    /usr/bin/python3 bench/pytorch_lora_train.py --batch-size 1 --steps 3 \
        --targets q_proj,v_proj

--bf16: the job as a PyTorch user runs a BF16 base (tinylora's `train --bf16`):
the projection and lm_head matrices are stored in bfloat16 and the step runs
under torch.autocast("cpu", dtype=torch.bfloat16), so every matmul (attention's
too) computes in bfloat16 through oneDNN; embeddings, norms and the LoRA
parameters stay float32.

--steps counts timed steps; --warmup (default 2) untimed ones run first.
Prints one JSON line on stdout: tokens_per_s is batch * seq_len over the
median step time of the timed steps, peak_rss_mb the process's maximum
resident set (getrusage), which includes the weights.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

PRESETS = {
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632,
                      num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=6,
                 num_attention_heads=8, num_key_value_heads=2,
                 vocab_size=4096),
}
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
               "up_proj", "down_proj"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tinyllama")
    ap.add_argument("--targets", default="q_proj,v_proj",
                    help="comma-separated module names, or all-linear")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true",
                    help="BF16 base matrices, autocast to bfloat16")
    args = ap.parse_args()
    if args.targets == "all-linear":
        args.modules = list(ALL_LINEARS)
    else:
        args.modules = [m for m in args.targets.split(",") if m]
        bad = [m for m in args.modules if m not in ALL_LINEARS]
        if bad or not args.modules:
            ap.error("--targets: unknown module(s) %s" % ",".join(bad))
    for flag in ("rank", "seq_len", "batch_size", "steps", "threads"):
        if getattr(args, flag) < 1:
            ap.error("--%s must be >= 1" % flag.replace("_", "-"))
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    return args


def main():
    args = parse_args()
    # Before torch loads: OpenBLAS (OpenMP build) and torch's pool alike.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(
        __file__)), "..", "tests", "reference"))
    import llama_ref
    import train_ref

    torch.set_num_threads(args.threads)
    config = llama_ref.make_config(max_position_embeddings=2048,
                                   **PRESETS[args.preset])
    gen = torch.Generator().manual_seed(args.seed)

    # Frozen base, random in memory (in place: no temporaries).
    weights = {}
    for name, shape in llama_ref.tensor_shapes(config).items():
        t = torch.empty(shape, dtype=torch.float32)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        else:
            t.normal_(0.0, 0.02, generator=gen)
            if args.bf16 and name.endswith(("_proj.weight", "lm_head.weight")):
                t = t.to(torch.bfloat16)
        weights[name] = t  # requires_grad False

    # LoRA as PEFT initialises it: A ~ U(+-1/sqrt(in)), B = 0.
    adapter = train_ref.random_adapter(config, args.rank, args.modules, gen,
                                       b_std=0.0)
    for t in adapter.values():
        t.requires_grad_(True)
    lora = train_ref.adapter_pairs(config, adapter, args.modules)
    scaling = args.alpha / args.rank
    params = list(adapter.values())
    optim = torch.optim.AdamW(params, lr=args.lr)

    print("weights in memory, peak rss %.1f MB" % (resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024.0), file=sys.stderr)

    vocab = config["vocab_size"]
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len + 1),
                            generator=gen)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        t0 = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = train_ref.model_logits(config, weights, inputs, lora,
                                            scaling)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, vocab).float(), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= args.warmup:
            times.append(dt)
        print("step %d%s: %.3f s, loss %.4f, peak rss %.1f MB" % (
            step, " (warm-up)" if step < args.warmup else "", dt,
            losses[-1], resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024.0), file=sys.stderr)
    assert all(math.isfinite(x) for x in losses)

    step_s = statistics.median(times)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "preset": args.preset,
        "targets": args.targets,
        "batch": args.batch_size,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "bf16": args.bf16,
        "tokens_per_s": round(args.batch_size * args.seq_len / step_s, 2),
        "peak_rss_mb": round(rss_mb, 1),
        "step_s": round(step_s, 4),
        "rank": args.rank,
        "lora_params": sum(p.numel() for p in params),
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
