"""Which kernels a decoding step should run: its weight matmuls and the Triton attention kernels' tiles, one at a time.

    python bench/decode_kernels.py --rows 64,3072 --out bench/results/decode_kernels_h200.json

Qwen2-1.5B shapes, bf16, one H200. Every measurement is a step's 28 calls (one per layer, each with its own
weights, so that nothing is served from the 50 MB L2 that a real step would read from memory) recorded in a CUDA
graph and replayed; the figure is the median over `--repeats` timings of `--reps` replays, in ms per step.

1. `matmul`: for each of the step's weight matmuls (the fused q/k/v projection with its bias, the output
   projection, the fused gate/up projection, the down projection, the LM head) at each row count: cuBLAS as
   `F.linear` calls it, cuBLASLt preferred, weights stored transposed, the split-K kernel below (compiled, so that
   its partial sums are added in one kernel, as a decoder would) and, with `--inductor`, Inductor's max-autotune (cuBLAS
   against Inductor's Triton templates, timed once per shape: the seconds it takes are recorded). Each row says
   the effective bandwidth (weight and activation bytes over the time) beside the bytes floor.
   `skinny`: the split-K kernel alone over its tiles (output block, K block, K slices, pipeline stages).
2. `decode_tiles`: `decode_attention` (one candidate per part, as greedy decoding runs it) at 64 rows and
   `--decode-filled` lengths, over key ranges, key-block sizes, warps and pipeline stages (`--decode-configs`), each
   layer's call reading its own caches.
3. `suffix_tiles`: `suffix_triton_attention` (16 candidates per part, as sampling runs it) at `--suffix-rows`,
   over `--suffix-configs` (BLOCK_N/num_warps/num_stages triples; default: a sweep).
"""
import argparse, itertools, json, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

from cadrecode_nb.model import qwen2_1_5b_config
import triton
import triton.language as tl

from cadrecode_nb.sampling import DECODE_TILES, SUFFIX_TILES, decode_attention, decode_splits, suffix_triton_attention

LAYERS = 28


# A split-K matmul for a few rows, tried against cuBLAS and rejected (bench/NOTES.md, "fifth pass"): each program takes
# all the rows against BLOCK_N outputs and one K slice, and writes its float32 partial sums; the caller adds them.
@triton.jit
def _skinny_matmul_kernel(X, W, Out, M, N, K, stride_x, stride_w,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    tile, split = tl.program_id(0), tl.program_id(1)
    m, kk = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_K)
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    lo = split * per_split
    hi = tl.minimum(lo + per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(lo, hi, BLOCK_K):
        k = start + kk
        x = tl.load(X + m[:, None] * stride_x + k[None, :], mask=(m < M)[:, None] & (k < hi)[None, :], other=0.0)
        w = tl.load(W + n[:, None] * stride_w + k[None, :], mask=(n < N)[:, None] & (k < hi)[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    tl.store(Out + (split * M + m[:, None]) * N + n[None, :], acc, mask=(m < M)[:, None] & (n < N)[None, :])


def skinny_tiles(n: int, k: int, sms: int) -> dict:
    "The first guess at tiles: 64 outputs per program, K split in two while the programs do not fill the SMs once."
    tiles, split = dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3), 1
    while -(-n // tiles['BLOCK_N']) * split < sms and k // (2 * split) >= tiles['BLOCK_K']: split *= 2
    return {**tiles, 'SPLIT_K': split}


@torch.library.custom_op('cadrecode_bench::skinny_partials', mutates_args=())
def skinny_partials(x: torch.Tensor, weight: torch.Tensor, block_n: int, block_k: int, split_k: int,
                    num_warps: int, num_stages: int) -> torch.Tensor:
    "The kernel's (split_k, rows, n) partial sums, an opaque op to torch.compile (which fuses their sum into what follows)."
    (rows, k), n = x.shape, weight.shape[0]
    out = torch.empty(split_k, rows, n, device=x.device, dtype=torch.float32)
    _skinny_matmul_kernel[(-(-n // block_n), split_k)](x, weight, out, rows, n, k, x.stride(0), weight.stride(0),
                                                       BLOCK_M=max(16, triton.next_power_of_2(rows)), BLOCK_N=block_n,
                                                       BLOCK_K=block_k, SPLIT_K=split_k, num_warps=num_warps, num_stages=num_stages)
    return out


@skinny_partials.register_fake
def _(x, weight, block_n, block_k, split_k, num_warps, num_stages):
    return x.new_empty(split_k, x.shape[0], weight.shape[0], dtype=torch.float32)


def skinny_linear(x, weight, bias, sms):
    "`F.linear` through the split-K kernel with `skinny_tiles`' tiles, partial sums and bias added in float32."
    t = skinny_tiles(*weight.shape, sms)
    partial = skinny_partials(x, weight, t['BLOCK_N'], t['BLOCK_K'], t['SPLIT_K'], t['num_warps'], t['num_stages'])
    return (partial.sum(0) if bias is None else partial.sum(0) + bias.float()).to(x.dtype)


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
        sms = torch.cuda.get_device_properties('cuda').multi_processor_count
        skinny = torch.compile(lambda x, w, b: skinny_linear(x, w, b, sms), dynamic=False, fullgraph=True)
        variants = {
            'cublas': lambda i: F.linear(x, ws[i], bs[i]),
            'transposed': lambda i: (torch.addmm(bs[i], x, wts[i]) if bs[i] is not None else x @ wts[i]),
            'skinny': lambda i: skinny(x, ws[i], bs[i])}
        res['skinny_max_abs_diff'] = round(float((skinny(x, ws[0], bs[0]).float() - ref).abs().max()), 4)
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


def skinny_sweep(args, record, rows=64) -> None:
    "`_skinny_matmul_kernel` alone (its partial sums not added) over tiles, at each of the step's matmuls but the LM head."
    for name, (n, k, _, calls) in list(matmul_shapes(qwen2_1_5b_config()).items())[:4]:
        x = torch.randn(rows, k, device='cuda', dtype=torch.bfloat16)
        ws = [torch.randn(n, k, device='cuda', dtype=torch.bfloat16) for _ in range(calls)]
        ref = x.float() @ ws[0].float().t()
        default, best = skinny_tiles(n, k, torch.cuda.get_device_properties('cuda').multi_processor_count), None
        for block_n, block_k, split, stages in itertools.product((32, 64), (64, 128, 256), (1, 2, 4, 8, 16), (3, 4)):
            if k // split < block_k or (n // block_n) * split > 8 * 132: continue
            tiles = dict(BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=4, num_stages=stages)
            partial = torch.empty(split, rows, n, device='cuda', dtype=torch.float32)
            launch = lambda i: _skinny_matmul_kernel[(-(-n // block_n), split)](
                x, ws[i], partial, rows, n, k, x.stride(0), ws[i].stride(0), BLOCK_M=rows, BLOCK_N=block_n, BLOCK_K=block_k,
                SPLIT_K=split, num_warps=4, num_stages=stages)
            row = dict(matmul=name, rows=rows, **tiles, default=tiles == default)
            try:
                row['ms'] = graph_ms(launch, args.repeats, args.reps, calls)
                launch(0); row['max_abs_diff'] = round(float((partial.sum(0) - ref).abs().max()), 4)
                row['tb_s'] = round(calls * (n * k + rows * (n + k)) * 2 / row['ms'] / 1e9, 2)
            except Exception as e: row['error'] = f'{type(e).__name__}: {str(e)[:160]}'
            record('skinny', row, quiet=True)
            if 'ms' in row and (best is None or row['ms'] < best['ms']): best = row
        print(json.dumps({'skinny_best': best}), flush=True)
        if best is not None: record.best_tiles[f'{n}x{k}'] = {t: best[t] for t in ('BLOCK_N', 'BLOCK_K', 'SPLIT_K', 'num_warps', 'num_stages')}
        print(json.dumps({'skinny_default': [r for r in result_rows(record, 'skinny') if r['matmul'] == name and r['default']]}), flush=True)


def result_rows(record, section): return record.result.get(section, [])


def compiled_decode_kernel(qkv, cache, cos, sin, used, hq, d, row) -> dict:
    "What Triton made of `decode_attention`'s kernel with a row's tiles: shared memory, and whether its loads were pipelined."
    from cadrecode_nb.sampling import _decode_attention_kernel
    rows, (pk, pv, sk, sv), hkv = len(used), cache, cache[2].shape[1]
    out = torch.empty(rows, row['splits'], hq, d, device='cuda'); lse = torch.empty(rows, row['splits'], hq, device='cuda')
    kernel = _decode_attention_kernel[(rows, hkv, row['splits'])](
        qkv, pk, pv, sk, sv, cos, sin, used, out, lse, d ** -0.5, pk.shape[1], sk.shape[0] // rows, 1, qkv.stride(0),
        pk.stride(0), pk.stride(1), sk.stride(0), HQ=hq, HKV=hkv, G=hq // hkv, BLOCK_G=16, D=d, SPLITS=row['splits'],
        BLOCK_N=row['BLOCK_N'], num_warps=row['num_warps'], num_stages=row['num_stages'])
    ttgir = kernel.asm.get('ttgir', '')
    return dict(shared_bytes=kernel.metadata.shared, async_copies=ttgir.count('async_copy'), tma_loads=ttgir.count('async_tma'))


def decode_tiles(args, record, rows=64, prompt_len=257, length=768, hq=12, hkv=2, d=128) -> None:
    bf = lambda *shape: torch.randn(*shape, device='cuda', dtype=torch.bfloat16)
    qkv, cos, sin = bf(rows, (hq + 2 * hkv) * d), bf(length, d), bf(length, d)
    # a prompt and suffix cache per layer, as a step reads them: one shared by the 28 calls (42 MB at 384 filled
    # slots) would be served from the 50 MB L2, as it was in the fifth pass's sweep
    caches = [(bf(rows, prompt_len, hkv, d), bf(rows, prompt_len, hkv, d), bf(rows * length, hkv, d), bf(rows * length, hkv, d))
              for _ in range(LAYERS)]
    configs = ([tuple(map(int, c.split('/'))) for c in args.decode_configs.split(',')] if args.decode_configs
               else itertools.product((1, 2, 4), (32, 64, 128), (2, 4, 8), (2, 3, 4)))
    for filled in map(int, args.decode_filled.split(',')):
        used = torch.full((rows,), filled, device='cuda', dtype=torch.int32)
        floor = LAYERS * (rows * (prompt_len + filled)) * hkv * d * 2 * 2 / args.bandwidth * 1e3
        best = None
        for splits, block_n, warps, stages in configs:
            tiles = dict(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            row = dict(rows=rows, filled=filled, splits=splits, **tiles, bytes_floor_ms=round(floor, 3),
                       current=tiles == DECODE_TILES and splits == decode_splits(rows, hkv, torch.device('cuda')))
            try: row['ms'] = graph_ms(lambda i: decode_attention(qkv, *caches[i], cos, sin, used, 1, hq, d ** -0.5,
                                                                 splits, tiles), args.repeats, args.reps)
            except Exception as e: row['error'] = f'{type(e).__name__}: {str(e)[:160]}'
            record('decode_tiles', row, quiet=True)
            if 'ms' in row and (best is None or row['ms'] < best['ms']): best = row
        if best is not None:
            try: best['compiled'] = compiled_decode_kernel(qkv, caches[0], cos, sin, used, hq, d, best)
            except Exception as e: best['compiled'] = f'{type(e).__name__}: {str(e)[:160]}'
        print(json.dumps({'decode_tiles_best': best}), flush=True)
        print(json.dumps({'decode_tiles_current': [r for r in result_rows(record, 'decode_tiles') if r['current'] and r['filled'] == filled]}), flush=True)


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
    ap.add_argument('--decode-configs', default='', help='decode_tiles: key ranges/BLOCK_N/num_warps/num_stages,... (default: a sweep)')
    ap.add_argument('--decode-filled', default='384,768', help='decode_tiles: filled suffix slots, comma-separated')
    ap.add_argument('--inductor', action='store_true', help="also Inductor's max-autotune (25-30 s of tuning per shape)")
    ap.add_argument('--parts', default='matmul,skinny,decode_tiles,suffix_tiles', help='what to measure, comma-separated')
    ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--reps', type=int, default=10)
    ap.add_argument('--bandwidth', type=float, default=4.8e12, help='bytes/s for the floors (H200: 4.8e12)')
    ap.add_argument('--out', default='decode_kernels.json')
    ap.add_argument('--best-out', default='', help="skinny: the fastest tiles per shape, as JSON for sampling.py --skinny-tiles")
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
        if 'skinny' in parts:
            skinny_sweep(args, record)
            if args.best_out: Path(args.best_out).write_text(json.dumps(record.best_tiles, indent=1))
        if 'decode_tiles' in parts: decode_tiles(args, record)
        if 'suffix_tiles' in parts: suffix_tiles(args, record)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    sys.exit(main())
