#!/usr/bin/env bash
# vmt-hub on an NVIDIA GPU, against the PyTorch reference on the same GPU; one JSON line
# per check and configuration. Runs on any Linux machine with a GPU, its driver, a Python
# with torch (the reference side; its pip nvidia-* packages also give the CUDA runtime,
# cuBLAS, cuRAND and NVRTC libraries the binary loads) and a vmt-hub built with
# `--features cuda` (scripts/check-cuda-build.sh; docs/cuda.md says how to carry it).
#
#   VMT_BIN=path/to/vmt-hub scripts/gpu-check.sh            # parity, training, the grid
#   GRID=quick scripts/gpu-check.sh                          # 224, batch 8, 1 and 8 tasks
#   DEVICE=cpu GRID=tiny VMT_BIN=target/release/vmt-hub scripts/gpu-check.sh  # dry run
#
# Checks, in order (the script stops at the first failure):
# 1. parity: `forward` on both fixtures of tests/fixtures on the device, every task output
#    and stage feature within 1e-4 of the reference's (as the CPU parity tests);
# 2. training: `train` of 40 steps on a synthesised dataset must lower the loss;
# 3. the grid: `bench forward` / `bench train` and reference/bench_reference.py on the
#    same configurations (Swin-T geometry; 224 and 448; batch 8 and 32; 1, 4, 8 tasks).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VMT_BIN:-target/cuda/release/vmt-hub}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"

if [ "$device" != cpu ]; then
  # The pip nvidia-* libraries of the Python that has torch, ahead of what is set.
  libs=$("$py" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True)}
print(":".join(sorted(dirs)))
PY
)
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader |
    sed 's/^/{"check": "gpu", "nvidia_smi": "/; s/$/"}/'
fi

# 1. Parity on the device.
for case in tiny tiny-lite; do
  f=tests/fixtures/$case
  "$bin" forward --bundle "$f/bundle" --backbone "$f/backbone" --input "$f/input.safetensors" \
    --out "$out/$case.safetensors" --device "$device"
  "$py" - "$out/$case.safetensors" "$f/expected.safetensors" "$case" "$device" <<'PY'
import json, sys
from safetensors.numpy import load_file
got, want = load_file(sys.argv[1]), load_file(sys.argv[2])
worst, names = 0.0, []
for name, g in got.items():
    if name not in want:
        continue
    w = want[name]
    assert g.shape == w.shape, f"{name}: {g.shape} vs {w.shape}"
    # as the CPU parity tests: |a - b| <= atol + rtol * |b|, atol = rtol = 1e-4
    excess = (abs(g - w) - 1e-4 * abs(w)).max()
    worst = max(worst, float(excess))
    names.append(name)
ok = worst <= 1e-4 and len(names) > 0
print(json.dumps({"check": "parity", "case": sys.argv[3], "device": sys.argv[4],
                  "tensors": len(names), "worst_abs_excess": worst, "ok": ok}))
sys.exit(0 if ok else 1)
PY
done

# 2. Training on the device lowers the loss.
"$bin" data synth --out "$out/synth" --count 32 --size 64 --seed 1 >/dev/null
"$bin" train --data "$out/synth" --registry "$out/registry" --run-dir "$out/run" \
  --steps 40 --batch 8 --lr 0.005 --device "$device" --tag gpu:check --quiet >/dev/null
"$py" - "$out/run/metrics.jsonl" "$device" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
ok = last < first
print(json.dumps({"check": "train", "device": sys.argv[2], "steps": len(rows),
                  "first_loss": first, "last5_mean_loss": last, "ok": ok}))
sys.exit(0 if ok else 1)
PY

# 3. Speed, both sides, alternating, one process per configuration and side.
names=(semseg human_parts sal normals depth seg5:segmentation:21 seg6:segmentation:21 seg7:segmentation:21)
task_list() { local IFS=,; echo "${names[*]:0:$1}"; }
case ${GRID:-full} in
  full) sizes="224 448"; batches="8 32"; counts="1 4 8" ;;
  quick) sizes="224"; batches="8"; counts="1 8" ;;
  tiny) sizes="224"; batches="2"; counts="1" ;;
esac
for mode in forward train; do for size in $sizes; do for batch in $batches; do for n in $counts; do
  if [ "$mode" = train ]; then
    "$bin" bench train --tasks "$n" --batch "$batch" --size "$size" --steps 5 --device "$device" \
      --json | sed 's/^{/{"side": "vmt-hub", "mode": "train", "device": "'"$device"'", /' ||
      echo "{\"side\": \"vmt-hub\", \"mode\": \"train\", \"size\": $size, \"batch\": $batch, \"tasks\": $n, \"failed\": true}"
  else
    "$bin" bench forward --tasks "$(task_list "$n")" --batch "$batch" --size "$size" --iters 10 \
      --device "$device" --json | sed 's/^{/{"side": "vmt-hub", "mode": "forward", "device": "'"$device"'", /' ||
      echo "{\"side\": \"vmt-hub\", \"mode\": \"forward\", \"size\": $size, \"batch\": $batch, \"tasks\": $n, \"failed\": true}"
  fi
  "$py" reference/bench_reference.py "$mode" --tasks "$n" --batch "$batch" --size "$size" \
    --steps 5 --iters 10 --device "$device" ||
    echo "{\"side\": \"pytorch\", \"mode\": \"$mode\", \"size\": $size, \"batch\": $batch, \"tasks\": $n, \"failed\": true}"
done; done; done; done
