#!/usr/bin/env bash
# vmt-hub against the PyTorch reference model (reference/vmt_ref.py) on identical
# configurations, both measured in the same run, alternating, one process per
# configuration and side; prints a table with the ratios and peak memory.
#
#   scripts/bench-vs-pytorch.sh          # 224x224, batch 2: train 1/4/8 tasks, inference 4
#   GRID=full scripts/bench-vs-pytorch.sh  # also 448 and batch 8, train and inference, 1/4/8
#
# PyTorch comes from PyPI into a virtualenv (VMT_BENCH_VENV, default .bench-venv) with the
# versions of reference/requirements.txt: a benchmark tool, never a dependency of the crates.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
venv=${VMT_BENCH_VENV:-.bench-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r reference/requirements.txt
fi
threads=${THREADS:-$(nproc)}
rounds=${ROUNDS:-2}
out=$(mktemp)
names=(semseg human_parts sal normals depth seg5:segmentation:21 seg6:segmentation:21 seg7:segmentation:21)
task_list() { local IFS=,; echo "${names[*]:0:$1}"; }

configs=("train 224 2 1" "train 224 2 4" "train 224 2 8" "forward 224 2 4")
if [ "${GRID:-}" = full ]; then
  configs=()
  for mode in train forward; do for size in 224 448; do for batch in 2 8; do for n in 1 4 8; do
    configs+=("$mode $size $batch $n")
  done; done; done; done
fi

for c in "${configs[@]}"; do
  read -r mode size batch n <<<"$c"
  for _ in $(seq "$rounds"); do
    if [ "$mode" = train ]; then
      RAYON_NUM_THREADS=$threads target/release/vmt-hub bench train --tasks "$n" --batch "$batch" \
        --size "$size" --steps 3 --json | sed 's/^/vmt-hub train /' >>"$out" || echo "vmt-hub train $c failed" >&2
      "$venv/bin/python" reference/bench_reference.py train --tasks "$n" --batch "$batch" \
        --size "$size" --steps 3 --threads "$threads" | sed 's/^/pytorch train /' >>"$out" || echo "pytorch train $c failed" >&2
    else
      RAYON_NUM_THREADS=$threads target/release/vmt-hub bench forward --tasks "$(task_list "$n")" \
        --batch "$batch" --size "$size" --iters 5 --json | sed 's/^/vmt-hub forward /' >>"$out" || echo "vmt-hub forward $c failed" >&2
      "$venv/bin/python" reference/bench_reference.py forward --tasks "$n" --batch "$batch" \
        --size "$size" --iters 5 --threads "$threads" | sed 's/^/pytorch forward /' >>"$out" || echo "pytorch forward $c failed" >&2
    fi
  done
done

python3 - "$out" "$threads" <<'PY'
import json, sys, statistics, collections
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    side, mode, js = line.split(" ", 2)
    r = json.loads(js)
    secs = r.get("seconds", r.get("step_s", r.get("median_s")))
    key = (mode, r["size"], r["batch"], r["tasks"])
    rows[key][side].append((secs, r.get("peak_rss_mib")))
print(f"threads: {sys.argv[2]}")
print("| mode | size | batch | tasks | vmt-hub s | PyTorch s | ratio | vmt-hub peak RSS | PyTorch peak RSS |")
print("|---|---|---|---|---|---|---|---|---|")
for key in sorted(rows):
    v, p = rows[key]["vmt-hub"], rows[key]["pytorch"]
    if not v or not p:
        continue
    fmt = lambda xs: "-".join(f"{x:.2f}" for x in (min(xs), max(xs))) if len(xs) > 1 else f"{xs[0]:.2f}"
    vs, ps = [x for x, _ in v], [x for x, _ in p]
    ratio = statistics.median(vs) / statistics.median(ps)
    rss = lambda xs: f"{max(m for _, m in xs if m):.0f} MiB" if any(m for _, m in xs) else "n/a"
    print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {fmt(vs)} | {fmt(ps)} | {ratio:.2f}x | {rss(v)} | {rss(p)} |")
PY
rm -f "$out"
