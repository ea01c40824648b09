"""Regenerates the parity fixtures in tests/fixtures from the reference model.

Run by hand, never by the tests (the tests read the committed fixtures):

    python3 -m venv .venv && .venv/bin/pip install -r reference/requirements.txt
    .venv/bin/python reference/make_fixtures.py --out tests/fixtures

Each case directory gets backbone/{config.json,model.safetensors} (a randomly
initialised Hugging Face SwinForImageClassification, seeded), bundle/{bundle.json,
adapter.safetensors} (trainable tensors randomised by vmt_ref.randomize),
input.safetensors (pixel_values and targets.<task>) and expected.safetensors
(outputs, generic stage features, unweighted losses, and gradients of their sum);
tests/fixtures/README.md describes the format and the tolerances.

The numbers depend on the torch and transformers versions (random initialisation
and kernels), so regenerated fixtures differ in their bytes from the committed ones,
while `cargo test --test parity` passes on both (VMT_FIXTURES=DIR points it at a
fresh set).
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import SwinConfig, SwinForImageClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmt_ref  # noqa: E402

TINY_SWIN = dict(
    image_size=64,
    patch_size=4,
    num_channels=3,
    embed_dim=32,
    depths=[2, 2, 2, 2],
    num_heads=[1, 2, 4, 8],
    window_size=4,
    mlp_ratio=4.0,
    qkv_bias=True,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.1,  # inert in eval mode; kept as the Hugging Face default shape
    hidden_act="gelu",
    use_absolute_embeddings=False,
    layer_norm_eps=1e-5,
    num_labels=10,
)

CASES = {
    "tiny": dict(
        adapter={"kind": "vmt", "reduction": 4, "scale": 1.0},
        tasks=[
            ("semseg", "segmentation", 5),
            ("human_parts", "segmentation", 3),
            ("sal", "saliency", 1),
            ("normals", "normals", 3),
        ],
        batch=2,
        seed=0,
    ),
    "tiny-lite": dict(
        adapter={"kind": "vmt-lite", "reduction": 4, "scale": 0.5},
        tasks=[("semseg", "segmentation", 5), ("sal", "saliency", 1)],
        batch=1,
        seed=1,
    ),
}

# A sample of gradients: adapter down/up in the first and a middle stage, a decoder
# head and lateral, KEM gamma and beta.
GRADS = [
    "adapter.stages.0.blocks.0.down.bias",
    "adapter.stages.0.blocks.0.down.weight",
    "adapter.stages.0.blocks.0.up.bias",
    "adapter.stages.0.blocks.0.up.weight",
    "adapter.stages.2.blocks.1.down.bias",
    "adapter.stages.2.blocks.1.down.weight",
    "tasks.semseg.decoder.head.weight",
    "tasks.semseg.decoder.lateral.3.weight",
    "tasks.semseg.kem.stages.0.blocks.1.gamma",
    "tasks.semseg.kem.stages.1.blocks.0.beta",
]


def bundle_json(case):
    return {
        "format": "vmt-bundle/1",
        "backbone": {
            "family": "swin",
            "embed_dim": TINY_SWIN["embed_dim"],
            "depths": TINY_SWIN["depths"],
            "num_heads": TINY_SWIN["num_heads"],
            "window_size": TINY_SWIN["window_size"],
            "patch_size": TINY_SWIN["patch_size"],
            "mlp_ratio": TINY_SWIN["mlp_ratio"],
            "layer_norm_eps": TINY_SWIN["layer_norm_eps"],
        },
        "adapter": case["adapter"],
        "decoder": {"dim": 16, "hidden": 32},
        "tasks": [{"name": n, "kind": k, "channels": c} for n, k, c in case["tasks"]],
    }


def targets(tasks, b, h, w, g):
    """Random targets with ignore pixels, in the fixture dtypes."""
    out = {}
    for name, kind, c in tasks:
        if kind == "segmentation":
            t = torch.randint(0, c, (b, h, w), generator=g, dtype=torch.uint8)
            t[torch.rand((b, h, w), generator=g) < 0.1] = 255
        elif kind == "saliency":
            t = (torch.rand((b, h, w), generator=g) < 0.4).to(torch.uint8)
            t[torch.rand((b, h, w), generator=g) < 0.1] = 255
        elif kind == "normals":
            t = torch.nn.functional.normalize(torch.randn((b, 3, h, w), generator=g), dim=1)
            t = t.masked_fill((torch.rand((b, 1, h, w), generator=g) < 0.1).expand(-1, 3, -1, -1), 255.0)
        elif kind == "depth":
            t = torch.rand((b, 1, h, w), generator=g) * 10
            t[torch.rand((b, 1, h, w), generator=g) < 0.1] = 0
        else:
            raise ValueError(kind)
        out[name] = t
    return out


def make_case(out_dir, name, case):
    torch.manual_seed(case["seed"])
    d = os.path.join(out_dir, name)
    for sub in ("backbone", "bundle"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)

    config = SwinConfig(**TINY_SWIN)
    clf = SwinForImageClassification(config).eval()
    # save_pretrained writes the Hub's names (`attention.self.query`, ...), as the
    # microsoft/swin-* repositories have them.
    clf.save_pretrained(os.path.join(d, "backbone"), safe_serialization=True)

    bundle = bundle_json(case)
    with open(os.path.join(d, "bundle", "bundle.json"), "w") as f:
        json.dump(bundle, f, indent=2)
    model = vmt_ref.VmtModel(config, bundle).eval()
    # The same frozen weights; each block's MLP now sits inside MlpWithAdapter.
    sd = {k.replace(".mlp.", ".mlp.mlp."): v for k, v in clf.swin.state_dict().items()}
    missing, unexpected = model.swin.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(".mlp.adapter." in k for k in missing), missing
    vmt_ref.randomize(model, case["seed"] + 100)
    state = {k: v.detach().contiguous() for k, v in model.bundle_state().items()}
    save_file(state, os.path.join(d, "bundle", "adapter.safetensors"), metadata={"format": "pt"})

    g = torch.Generator().manual_seed(case["seed"] + 200)
    b, h, w = case["batch"], 64, 64
    pixels = torch.randn((b, 3, h, w), generator=g)
    tg = targets(case["tasks"], b, h, w, g)
    inputs = {"pixel_values": pixels}
    inputs.update({f"targets.{k}": v for k, v in tg.items()})
    save_file(inputs, os.path.join(d, "input.safetensors"))

    out, feats = model(pixels, return_features=True)
    losses = vmt_ref.losses(bundle, out, {k: v for k, v in tg.items()})
    total = sum(losses.values())
    total.backward()
    expected = {}
    for t in bundle["tasks"]:
        expected[t["name"]] = out[t["name"]].detach().contiguous()
        expected[f"loss.{t['name']}"] = losses[t["name"]].detach().reshape(1)
    for i, f in enumerate(feats):
        expected[f"features.stage{i}"] = f.detach().permute(0, 3, 1, 2).contiguous()
    params = model.bundle_state()
    for n in GRADS:
        if n in params:
            expected[f"grad.{n}"] = params[n].grad.detach().contiguous()
    save_file(expected, os.path.join(d, "expected.safetensors"))
    print(f"{name}: {len(expected)} expected tensors, losses "
          + ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}")
    for name, case in CASES.items():
        make_case(args.out, name, case)


if __name__ == "__main__":
    main()
