"""Which kernels a decoding step should run: its weight matmuls and the Triton attention kernels' tiles, one at a time.

    python bench/decode_kernels.py --rows 64,3072 --out bench/results/decode_kernels_h200.json

Qwen2-1.5B shapes, bf16, one H200. Every measurement is a step's 28 calls (one per layer, each with its own
weights, so that nothing is served from the 50 MB L2 that a real step would read from memory) recorded in a CUDA
graph and replayed; the figure is the median over `--repeats` timings of `--reps` replays, in ms per step.

1. `matmul`: for each of the step's weight matmuls (the fused q/k/v projection with its bias, the output
   projection, the fused gate/up projection, the down projection, the LM head) at each row count: cuBLAS as
   `F.linear` calls it, cuBLASLt preferred, weights stored transposed, the library's `splitk_linear` (up to 64 rows;
   a split-K Triton kernel that adds its own partial sums) and, with `--inductor`, Inductor's max-autotune (cuBLAS
   against Inductor's Triton templates, timed once per shape: the seconds it takes are recorded). Each row says
   the effective bandwidth (weight and activation bytes over the time) beside the bytes floor.
   `splitk`: `splitk_linear` over its tiles (output block, K block, K slices, pipeline stages), at 64 rows.
2. `decode_tiles`: `decode_attention` (one candidate per part, as greedy decoding runs it) at 64 rows and two
   filled lengths, over key ranges, key-block sizes, warps and pipeline stages.
3. `suffix_tiles`: `suffix_triton_attention` (16 candidates per part, as sampling runs it) at `--suffix-rows`,
   over `--suffix-configs` (BLOCK_N/num_warps/num_stages triples; default: a sweep).
"""
import argparse, itertools, json, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

from cadrecode_nb.model import qwen2_1_5b_config

from cadrecode_nb.sampling import (DECODE_TILES, SPLITK_TILES, SUFFIX_TILES, decode_attention, splitk_linear, splitk_tiles,
                                   suffix_triton_attention)

LAYERS = 28


def graph_ms(call, repeats: int, reps: int, layers: int = LAYERS) -> float:
    "Median ms of one replay of a graph that holds `call(i)` for i in range(layers)."
    for i in range(layers): call(i)   # compiles, warms up, picks cuBLAS algorithms outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(layers): call(i)
    graph.replay(); torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps): graph.replay()
        stop.record(); torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / reps)
    del graph
    return round(statistics.median(times), 4)


def matmul_shapes(cfg) -> dict:
    "name -> (out features, in features, bias, calls per step) of the step's weight matmuls."
    hd = cfg.hidden_size // cfg.num_attention_heads
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd
    return dict(qkv=(qkv, cfg.hidden_size, True, LAYERS), o=(cfg.hidden_size, cfg.num_attention_heads * hd, False, LAYERS),
                gate_up=(2 * cfg.intermediate_size, cfg.hidden_size, False, LAYERS),
                down=(cfg.hidden_size, cfg.intermediate_size, False, LAYERS), lm_head=(cfg.vocab_size, cfg.hidden_size, False, 1))


def _linear(x, w, b): return F.linear(x, w, b)


def matmul_rows(rows: int, args, record) -> None:
    cfg = qwen2_1_5b_config()
    for name, (n, k, has_bias, calls) in matmul_shapes(cfg).items():
        x = torch.randn(rows, k, device='cuda', dtype=torch.bfloat16)
        ws = [torch.randn(n, k, device='cuda', dtype=torch.bfloat16) * 0.02 for _ in range(calls)]
        bs = [torch.randn(n, device='cuda', dtype=torch.bfloat16) if has_bias else None for _ in range(calls)]
        wts = [w.t().contiguous() for w in ws]
        nbytes = calls * (n * k + rows * (n + k)) * 2
        res = dict(matmul=name, rows=rows, out_features=n, in_features=k, calls=calls,
                   bytes_floor_ms=round(nbytes / args.bandwidth * 1e3, 4))
        ref = F.linear(x, ws[0], bs[0]).float()
        variants = {
            'cublas': lambda i: F.linear(x, ws[i], bs[i]),
            'transposed': lambda i: (torch.addmm(bs[i], x, wts[i]) if bs[i] is not None else x @ wts[i])}
        if rows <= 64 and name != 'lm_head':
            variants['splitk'] = lambda i: splitk_linear(x, ws[i], bs[i])
            res['splitk_max_abs_diff'] = round(float((splitk_linear(x, ws[0], bs[0]).float() - ref).abs().max()), 4)
        if args.inductor:
            tuned = torch.compile(_linear, dynamic=False, fullgraph=True, options={'max_autotune': True})
            variants['inductor_max_autotune'] = lambda i: tuned(x, ws[i], bs[i])
            t = time.perf_counter(); out = tuned(x, ws[0], bs[0]); torch.cuda.synchronize()
            res['max_autotune_first_call_s'] = round(time.perf_counter() - t, 1)
            res['max_autotune_max_abs_diff'] = round(float((out.float() - ref).abs().max()), 4)
        for vname, call in variants.items():
            try: res[f'{vname}_ms'] = graph_ms(call, args.repeats, args.reps, calls)
            except Exception as e: res[f'{vname}_error'] = f'{type(e).__name__}: {str(e)[:200]}'
        try:
            torch.backends.cuda.preferred_blas_library('cublaslt')
            res['cublaslt_ms'] = graph_ms(variants['cublas'], args.repeats, args.reps, calls)
        except Exception as e: res['cublaslt_error'] = f'{type(e).__name__}: {str(e)[:200]}'
        finally: torch.backends.cuda.preferred_blas_library('cublas')
        for key in [k for k in res if k.endswith('_ms') and k != 'bytes_floor_ms']:
            res[key.replace('_ms', '_tb_s')] = round(nbytes / res[key] / 1e9, 2)
        record('matmul', res)


def splitk_sweep(args, record, rows=64) -> None:
    "The library's `splitk_linear` (partial sums added in the kernel) over tiles, at the q/k/v, output and down shapes."
    for name, (n, k, _, calls) in list(matmul_shapes(qwen2_1_5b_config()).items())[:4]:
        if name == 'gate_up': continue   # cuBLAS on the input-major copy is kept for it
        x = torch.randn(rows, k, device='cuda', dtype=torch.bfloat16)
        ws = [torch.randn(n, k, device='cuda', dtype=torch.bfloat16) for _ in range(calls)]
        ref = x.float() @ ws[0].float().t()
        current, best = splitk_tiles(n, k, torch.cuda.get_device_properties('cuda').multi_processor_count), None
        for block_n, block_k, split, stages in itertools.product((32, 64), (64, 128, 256), (1, 2, 4, 8, 16), (3, 4)):
            if k // split < block_k or (n // block_n) * split > 8 * 132: continue
            tiles = dict(BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=4, num_stages=stages)
            row = dict(matmul=name, rows=rows, **tiles, current=tiles == current)
            try:
                row['ms'] = graph_ms(lambda i: splitk_linear(x, ws[i], None, None, tiles), args.repeats, args.reps, calls)
                row['max_abs_diff'] = round(float((splitk_linear(x, ws[0], None, None, tiles).float() - ref).abs().max()), 4)
                row['tb_s'] = round(calls * (n * k + rows * (n + k)) * 2 / row['ms'] / 1e9, 2)
            except Exception as e: row['error'] = f'{type(e).__name__}: {str(e)[:160]}'
            record('splitk', row, quiet=True)
            if 'ms' in row and (best is None or row['ms'] < best['ms']): best = row
        print(json.dumps({'splitk_best': best}), flush=True)
        if best is not None: record.best_tiles[f'{n}x{k}'] = {t: best[t] for t in ('BLOCK_N', 'BLOCK_K', 'SPLIT_K', 'num_warps', 'num_stages')}
        print(json.dumps({'splitk_current': [r for r in result_rows(record, 'splitk') if r['matmul'] == name and r['current']]}), flush=True)


def result_rows(record, section): return record.result.get(section, [])


def decode_tiles(args, record, rows=64, prompt_len=257, length=768, hq=12, hkv=2, d=128) -> None:
    bf = lambda *shape: torch.randn(*shape, device='cuda', dtype=torch.bfloat16)
    qkv, pk, pv, sk, sv = bf(rows, (hq + 2 * hkv) * d), bf(rows, prompt_len, hkv, d), bf(rows, prompt_len, hkv, d), \
                          bf(rows * length, hkv, d), bf(rows * length, hkv, d)
    cos, sin = bf(length, d), bf(length, d)
    for filled in (384, 768):
        used = torch.full((rows,), filled, device='cuda', dtype=torch.int32)
        floor = LAYERS * (rows * (prompt_len + filled)) * hkv * d * 2 * 2 / args.bandwidth * 1e3
        best = None
        for splits, block_n, warps, stages in itertools.product((1, 2, 4), (32, 64, 128), (2, 4, 8), (2, 3, 4)):
            tiles = dict(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            row = dict(rows=rows, filled=filled, splits=splits, **tiles, bytes_floor_ms=round(floor, 3),
                       current=tiles == DECODE_TILES)
            try: row['ms'] = graph_ms(lambda i: decode_attention(qkv, pk, pv, sk, sv, cos, sin, used, 1, hq, d ** -0.5,
                                                                 splits, tiles), args.repeats, args.reps)
            except Exception as e: row['error'] = f'{type(e).__name__}: {str(e)[:160]}'
            record('decode_tiles', row, quiet=True)
            if 'ms' in row and (best is None or row['ms'] < best['ms']): best = row
        print(json.dumps({'decode_tiles_best': best}), flush=True)


def suffix_tiles(args, record, prompt_len=257, length=448, filled=200, hq=12, hkv=2, d=128) -> None:
    rows, g = args.suffix_rows, hq // hkv
    q = torch.randn(rows * g, hkv, d, device='cuda', dtype=torch.bfloat16)
    k, v = (torch.randn(rows * length, hkv, d, device='cuda', dtype=torch.bfloat16) for _ in range(2))
    used = torch.full((rows,), filled, device='cuda', dtype=torch.int32)
    steps = torch.arange(rows + 1, device='cuda', dtype=torch.int32)
    best = None
    configs = ([tuple(map(int, c.split('/'))) for c in args.suffix_configs.split(',')] if args.suffix_configs
               else itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4)))
    for block_n, warps, stages in configs:
        tiles = dict(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
        row = dict(rows=rows, filled=filled, **tiles, current=tiles == SUFFIX_TILES,
                   bytes_floor_ms=round(LAYERS * rows * filled * hkv * d * 2 * 2 / args.bandwidth * 1e3, 3))
        try: row['ms'] = graph_ms(lambda i: suffix_triton_attention(q, k, v, used, steps * g, steps * length, d ** -0.5, tiles),
                                  args.repeats, args.reps)
        except Exception as e: row['error'] = f'{type(e).__name__}: {str(e)[:160]}'
        record('suffix_tiles', row)
        if 'ms' in row and (best is None or row['ms'] < best['ms']): best = row
    print(json.dumps({'suffix_tiles_best': best}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', default='64,3072', help='row counts for the matmuls, comma-separated')
    ap.add_argument('--suffix-rows', type=int, default=3072)
    ap.add_argument('--suffix-configs', default='', help='BLOCK_N/num_warps/num_stages,... (default: a sweep)')
    ap.add_argument('--inductor', action='store_true', help="also Inductor's max-autotune (25-30 s of tuning per shape)")
    ap.add_argument('--parts', default='matmul,splitk,decode_tiles,suffix_tiles', help='what to measure, comma-separated')
    ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--reps', type=int, default=10)
    ap.add_argument('--bandwidth', type=float, default=4.8e12, help='bytes/s for the floors (H200: 4.8e12)')
    ap.add_argument('--out', default='decode_kernels.json')
    ap.add_argument('--best-out', default='', help="splitk: the fastest tiles per shape, as JSON (SPLITK_TILES' form)")
    args = ap.parse_args()
    result = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(), args=vars(args))

    def record(section, row, quiet=False):
        result.setdefault(section, []).append(row)
        if not quiet: print(json.dumps({section: row}), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    record.result, record.best_tiles = result, {}

    torch.manual_seed(0)
    parts = args.parts.split(',')
    with torch.no_grad():
        if 'matmul' in parts:
            for rows in map(int, args.rows.split(',')): matmul_rows(rows, args, record)
        if 'splitk' in parts:
            splitk_sweep(args, record)
            if args.best_out: Path(args.best_out).write_text(json.dumps(record.best_tiles, indent=1))
        if 'decode_tiles' in parts: decode_tiles(args, record)
        if 'suffix_tiles' in parts: suffix_tiles(args, record)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    sys.exit(main())
