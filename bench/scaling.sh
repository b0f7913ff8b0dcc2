#!/usr/bin/env bash
# Scaling of the trainer's own entry point over GPUs: the `paper` recipe (Qwen2-1.5B shapes, random weights, packed
# rows, compiled layers) under torchrun on 1 GPU and on N GPUs. Prints tokens/s per GPU and the scaling efficiency
# (tokens/s on N GPUs / (N x tokens/s on 1 GPU)).
#   strong (default): the recipe's global batch of 18 on both: 1 GPU runs 2 micro-batches of 9 (accumulated), N GPUs
#                     one micro-batch of 18/N each.
#   weak:             18 samples per GPU on both: 1 GPU runs a batch of 18, N GPUs a global batch of 18 x N.
# (`python -m torch.distributed.run` is `torchrun`, called through the interpreter that has the kit installed.)
#   bash bench/scaling.sh DATA_DIR OUT_DIR [N] [STEPS] [strong|weak]
set -euo pipefail
data=${1:?dataset folder}; out=${2:?output folder}; n=${3:-2}; steps=${4:-40}; mode=${5:-strong}
mkdir -p "$out"
common=(--config paper --model qwen2-1.5b --tokenizer "$data/tokenizer" --data_dir "$data" --steps 100000
        --stop_at "$steps" --val_every 0 --save_every 100000 --export none --log_every 1 --no-progress --resume never)
for gpus in 1 "$n"; do
  rm -rf "$out/gpus$gpus"   # this script's own scratch run: the trainer refuses to start over a run's checkpoints
  if [ "$mode" = weak ]; then sizes=(--batch_size $(( 18 * gpus )) --micro_batch_size 18)
  else sizes=(--batch_size 18 --micro_batch_size $(( 18 / (gpus == 1 ? 2 : gpus) ))); fi
  python -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m cadrecode_nb.trainer "${common[@]}" \
    --out_dir "$out/gpus$gpus" "${sizes[@]}" 2>&1 | grep -v "Warning\|warn(\|pow_by_natural" | tail -8
done
python - "$out" "$n" "$mode" <<'PY'
import json, statistics, sys
from pathlib import Path
out, n, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rate(g):   # medians over the steps after the first 10 (compilation, warm-up); each record's step_s is that step's
              # own GPU time (CUDA events around its work), so the last step counts like the others
    rows = [json.loads(l) for l in (out/f'gpus{g}'/'history.jsonl').read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r.get('kind') == 'train' and r['step'] > 10]
    return statistics.median(r['tokens_per_s'] for r in rows), statistics.median(r['step_s'] for r in rows), max(r['peak_mem_gb'] for r in rows)
(t1, s1, m1), (tn, sn, mn) = rate(1), rate(n)
print(json.dumps(dict(mode=mode, gpus=n, tokens_per_s_1gpu=round(t1), s_per_step_1gpu=round(s1, 4), peak_gb_1gpu=round(m1, 1),
                      tokens_per_s_total=round(tn), tokens_per_s_per_gpu=round(tn / n), s_per_step=round(sn, 4),
                      peak_gb_per_gpu=round(mn, 1), scaling_efficiency=round(tn / (n * t1), 3))))
PY
