"""The PyTorch side of scripts/bench-vs-pytorch.sh: the reference model (vmt_ref.py)
on the configuration `vmt-hub bench train` / `bench forward` use, one JSON line out.

    python reference/bench_reference.py train --tasks 4 --batch 2 --size 224 --steps 3
    python reference/bench_reference.py forward --tasks 4 --batch 2 --size 224 --iters 5
    python reference/bench_reference.py train --tasks 8 --batch 32 --size 448 --device cuda

Swin-T geometry with random weights (the cost of the real Swin-T), VMT-Adapter with
reduction 4, decoders 32/64, the tasks of `vmt_hub::tasks::bench_tasks(n)`; training:
AdamW (lr 1e-4, weight decay 1e-4) on the bundle's tensors only, the unweighted sum of
the task losses, global-norm clipping at 1.0, a random batch; threads = --threads.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
from transformers import SwinConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmt_ref  # noqa: E402

KNOWN = [
    ("semseg", "segmentation", 21),
    ("human_parts", "segmentation", 7),
    ("sal", "saliency", 1),
    ("normals", "normals", 3),
    ("depth", "depth", 1),
]


def bench_tasks(n):
    return [
        KNOWN[i] if i < len(KNOWN) else (f"seg{i}", "segmentation", 21) for i in range(n)
    ]


def model_for(n_tasks):
    config = SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    bundle = {
        "adapter": {"kind": "vmt", "reduction": 4, "scale": 1.0},
        "decoder": {"dim": 32, "hidden": 64},
        "tasks": [{"name": n, "kind": k, "channels": c} for n, k, c in bench_tasks(n_tasks)],
    }
    model = vmt_ref.VmtModel(config, bundle)
    vmt_ref.randomize(model, 0)
    return model, bundle


def targets(bundle, b, s):
    out = {}
    for t in bundle["tasks"]:
        kind, c = t["kind"], t["channels"]
        if kind == "segmentation":
            out[t["name"]] = torch.randint(0, c, (b, s, s), dtype=torch.uint8)
        elif kind == "saliency":
            out[t["name"]] = torch.randint(0, 2, (b, s, s), dtype=torch.uint8)
        elif kind == "normals":
            out[t["name"]] = torch.nn.functional.normalize(torch.randn(b, 3, s, s), dim=1)
        else:
            out[t["name"]] = torch.rand(b, 1, s, s) * 10 + 0.1
    return out


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_gemm(a, dev):
    """The GEMMs of `vmt-hub bench gemm`: Swin-T's linear layers, x @ w.t() forward and
    grad @ w backward, the fastest of `--iters` runs each (GFLOP/s)."""
    for stage in range(4):
        tokens = a.batch * (a.size // 4 >> stage) ** 2
        c = 96 << stage
        for name, inp, out in [("qkv", c, 3 * c), ("proj", c, c), ("fc1", c, 4 * c), ("fc2", 4 * c, c)]:
            w = torch.randn(out, inp, device=dev)
            for backward in (False, True):
                x = torch.randn(tokens, out if backward else inp, device=dev)
                best = float("inf")
                for _ in range(max(1, a.iters)):
                    t = time.perf_counter()
                    _ = x @ w if backward else x @ w.t()
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    best = min(best, time.perf_counter() - t)
                print(json.dumps({
                    "side": "pytorch", "mode": "gemm", "threads": a.threads,
                    "layer": f"stage {stage + 1} {name} {'backward' if backward else 'forward'}",
                    "gflops": 2 * tokens * inp * out / best / 1e9, "torch": torch.__version__,
                }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "forward", "gemm"])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    if a.mode == "gemm":
        bench_gemm(a, dev)
        return
    model, bundle = model_for(a.tasks)
    model.to(dev)
    pixels = torch.randn(a.batch, 3, a.size, a.size, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def report(mode, seconds):
        r = {
            "side": "pytorch", "mode": mode, "tasks": a.tasks, "batch": a.batch,
            "size": a.size, "seconds": seconds, "peak_rss_mib": peak_rss_mib(),
            "torch": torch.__version__, "threads": a.threads, "device": a.device,
        }
        if dev.type == "cuda":
            r["gpu"] = torch.cuda.get_device_name(dev)
            r["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        print(json.dumps(r))
    if a.mode == "forward":
        model.eval()
        with torch.no_grad():
            model(pixels)  # warm-up
            sync()
            times = []
            for _ in range(max(1, a.iters)):
                t = time.perf_counter()
                model(pixels)
                sync()
                times.append(time.perf_counter() - t)
        report("forward", statistics.median(times))
        return
    model.train()
    params = list(model.bundle_state().values())
    decay = [p for n, p in model.bundle_state().items() if n.endswith("weight") and p.dim() == 2]
    no_decay = [p for n, p in model.bundle_state().items() if not (n.endswith("weight") and p.dim() == 2)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
    )
    tg = {k: v.to(dev) for k, v in targets(bundle, a.batch, a.size).items()}

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(pixels)
        loss = sum(vmt_ref.losses(bundle, out, tg).values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    step()  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(max(1, a.steps)):
        step()
    sync()
    report("train", (time.perf_counter() - t) / max(1, a.steps))


if __name__ == "__main__":
    main()
