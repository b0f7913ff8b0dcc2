#!/usr/bin/env bash
# The `paper` recipe on one GPU, for a few hundred steps: Qwen2-1.5B shapes with random weights (the hub is not
# reachable on the GPU machine), the kit's procedural data and offline tokenizer, checkpoint written at step 200,
# then resumed for 30 more steps. Prints step time, peak memory and the projected hours for 100k steps.
#   bash bench/paper_recipe_h200.sh DATA_DIR OUT_DIR
set -euo pipefail
data=${1:?dataset folder (cadrecode_data --preset small --n-samples 3000 --out DATA_DIR)}; out=${2:?output folder}
mkdir -p "$out"
common=(--config paper --model qwen2-1.5b --tokenizer "$data/tokenizer" --data_dir "$data" --out_dir "$out/run"
        --save_every 200 --val_every 100 --val_batches 4 --eval_every 0 --log_every 10 --no-progress)
python -m cadrecode_nb.trainer "${common[@]}" --stop_at 200 2>&1 | tee "$out/phase1.log"
python -m cadrecode_nb.trainer "${common[@]}" --stop_at 230 2>&1 | tee "$out/phase2.log"
python - "$out/run" <<'PY'
import json, statistics, sys
from pathlib import Path
rows = [json.loads(l) for l in (Path(sys.argv[1])/'history.jsonl').read_text().splitlines() if l.strip()]
train = [r for r in rows if 'step_s' in r and r.get('step', 0) > 20]
st = statistics.median(r['step_s'] for r in train)
print(json.dumps(dict(steps_logged=len(train), last_step=rows[-1].get('step'), median_s_per_step=round(st, 4),
      hours_per_100k=round(st * 1e5 / 3600, 2), median_tokens_per_s=round(statistics.median(r['tokens_per_s'] for r in train)),
      median_mfu=round(statistics.median(r['mfu'] for r in train), 3), peak_mem_gb=max(r.get('peak_mem_gb', 0) for r in train),
      first_loss=train[0]['loss'], last_loss=train[-1]['loss'])))
PY
