#!/usr/bin/env bash
# Scaling of the trainer's own entry point over GPUs: the `paper` recipe (Qwen2-1.5B shapes, random weights, packed
# rows, compiled layers) at a global batch of 18 under torchrun, on 1 GPU (2 micro-batches of 9, accumulated) and on
# N GPUs (one micro-batch of 18/N each). Prints tokens/s per GPU and the scaling efficiency against one GPU.
#   bash bench/scaling.sh DATA_DIR OUT_DIR [N] [STEPS]
set -euo pipefail
data=${1:?dataset folder}; out=${2:?output folder}; n=${3:-2}; steps=${4:-40}
mkdir -p "$out"
common=(--config paper --model qwen2-1.5b --tokenizer "$data/tokenizer" --data_dir "$data" --steps 100000
        --stop_at "$steps" --val_every 0 --save_every 100000 --export false --log_every 5 --no-progress)
for gpus in 1 "$n"; do
  torchrun --standalone --nproc_per_node "$gpus" -m cadrecode_nb.trainer "${common[@]}" --out_dir "$out/gpus$gpus" \
    --micro_batch_size $(( 18 / (gpus == 1 ? 2 : gpus) )) --resume never 2>&1 | grep -v "Warning\|warn(\|pow_by_natural" | tail -5
done
python - "$out" "$n" <<'PY'
import json, statistics, sys
from pathlib import Path
out, n = Path(sys.argv[1]), int(sys.argv[2])
def rate(g):   # median tokens/s over the logged steps after the first 10 (compilation, warm-up)
    rows = [json.loads(l) for l in (out/f'gpus{g}'/'history.jsonl').read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r.get('kind') == 'train' and r['step'] > 10]
    return statistics.median(r['tokens_per_s'] for r in rows), statistics.median(r['step_s'] for r in rows), max(r['peak_mem_gb'] for r in rows)
(t1, s1, m1), (tn, sn, mn) = rate(1), rate(n)
print(json.dumps(dict(gpus=n, tokens_per_s_1gpu=round(t1), s_per_step_1gpu=round(s1, 4), peak_gb_1gpu=m1,
                      tokens_per_s_total=round(tn), tokens_per_s_per_gpu=round(tn / n), s_per_step=round(sn, 4), peak_gb_per_gpu=mn,
                      scaling_efficiency=round(tn / (n * t1), 3))))
PY
