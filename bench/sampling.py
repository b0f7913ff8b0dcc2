"""Many sampled candidates per part: the shared-prompt decoder (`cadrecode_nb.sampling`) against today's decoders.

    python bench/sampling.py --out bench/results/sampling_h200.json

One command, one GPU, about 5 minutes. In order, each result printed as a JSON line and the file rewritten:
1. `agreement`: on a small float32 model on the device (and in bf16 for 'flash', 'triton' and 'fused', whose kernels take half
   precision only: there the rows' first divergence from `generate` and from the matmul path is reported, since bf16
   rounds differently in each), the GPU path (compiled pieces, CUDA graphs) against the references: greedy tokens equal `generate`'s; a seeded sampled run equal on its first call (compiling
   and recording) and on replays, and different under another seed; shared-prompt candidates equal independently
   prompted ones; and how many sampled rows equal `generate`'s under the same seed (reported, not required: on a GPU
   the two compute the logits with different kernels).
2. `sampling`: Qwen2-1.5B shapes, random bf16 weights, `--candidates` per part, temperature `--temperature`, top-p
   `--top-p`, exactly `--new-tokens` tokens (END masked until then), for each number of parts in `--parts` and each
   variant in `--variants` ('fused': one Triton kernel for the whole attention of a layer, `decode_attention`, the
   default for one candidate per part; 'fused:N' the same with N key ranges per row; 'triton': the default for
   several candidates per part, flat layouts with FlashAttention-2 for the prompt and the Triton
   kernel for the suffix; 'flash': the same with FlashAttention-2's variable-length kernel for the suffix; 'matmul':
   the bucketed attention in plain matmuls; 'flex': the bucketed attention in FlexAttention; 'graphed': the eager
   pieces in CUDA graphs): first-call seconds (prefill, compile, record, decode), samples/s and ms per step of a
   second call, peak memory, and the step's floors: bytes read / `--bandwidth` and matmul FLOPs / `--matmul-flops`.
   With a flat variant it starts with `kernels` (the kernels against their float32 matmul versions),
   `decode_timing` (the fused kernel alone, 1 to 16 key ranges, a step's 28 calls in a CUDA graph) and
   `suffix_timing` (the suffix alone, FlashAttention-2 against Triton, 28 eager calls per step).
3. `greedy`: `--greedy-tokens` tokens at each batch of `--greedy-batch`, today's `greedy_decode_static` (unless
   `--skip-today`) and the new path.
4. `old`: optionally (`--old-rows`), today's greedy decoder re-measured at `--new-tokens` for the issue's table.

A CPU smoke run (a tiny model, seconds):
    python bench/sampling.py --device cpu --model-kw '{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":1024}' --parts 2 --candidates 4 --new-tokens 20
        --greedy-tokens 24 --greedy-batch 4 --old-rows 4 --variants graphed --out /tmp/sampling_smoke.json
(on a CPU both variants run the same eager code; the agreement checks dominate its time)
"""
import argparse, gc, json, sys, time
from pathlib import Path

import torch

from cadrecode_nb.model import (CADRecode, generate_token_ids, greedy_decode_static, qwen2_1_5b_config,
                                tiny_config)
from cadrecode_nb import sampling
from cadrecode_nb.sampling import (decode_attention, decode_attention_matmul, decode_splits, decode_step_bytes,
                                   merge_prefix_suffix, merge_splits, prefix_flash_attention, queries_by_part,
                                   shared_prompt_decode, suffix_flash_attention, suffix_triton_attention)

START, END = 151644, 151643   # Qwen2's <|im_start|> and <|endoftext|>
N_POINTS = 256
# today's figures (the issue: greedy_decode_static, greedy, 400 new tokens, one H200): rows -> (samples/s, ms/step)
TODAY = {64: (44.7, 3.58), 128: (68.1, 4.70), 256: (88.1, 7.27), 512: (101.5, 12.62)}
VARIANTS = {'fused': dict(graphed=True, compiled=True, attention='fused'),      # one Triton kernel per layer's attention (fourth pass)
            'triton': dict(graphed=True, compiled=True, attention='triton'),    # the flash path, the suffix in Triton (third pass)
            'flash': dict(graphed=True, compiled=True, attention='flash'),      # FlashAttention-2's kernels (third pass)
            'flex': dict(graphed=True, compiled=True, attention='flex'),        # FlexAttention (second pass)
            'matmul': dict(graphed=True, compiled=True, attention='matmul'),    # the default (the first pass's 'compiled')
            'graphed': dict(graphed=True, compiled=False)}


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def free(model=None, device=None):
    "Drop the decoders kept on the model (buffers, graphs) and return their memory."
    if model is not None: model._cadrecode_shared_decoder = model._cadrecode_static_cache = None
    gc.collect()
    if device is not None and device.type == 'cuda': torch.cuda.empty_cache()


def timed(fn, device):
    sync(device); t = time.perf_counter(); out = fn(); sync(device)
    return out, time.perf_counter() - t


def variant_kw(name, device):
    "A variant's decoder arguments; 'fused:8' is 'fused' with 8 key ranges per row (default: `decode_splits`)."
    name, _, splits = name.partition(':')
    kw = VARIANTS[name] if device.type == 'cuda' else dict(graphed=False, compiled=False, attention=VARIANTS[name].get('attention', 'matmul'))
    return {**kw, 'splits': int(splits)} if splits else kw


FLAT = ('flash', 'triton', 'fused')   # variants whose suffix is read to each row's filled length (no buckets)
is_flat = lambda variant: variant.partition(':')[0] in FLAT


def agreement(device, variant, dtype=torch.float32) -> dict:
    "The GPU path against the references on a small model with well-separated logits (16 rows throughout); in bf16 the flash kernels run."
    torch.manual_seed(0)
    with torch.device(device): model = CADRecode(tiny_config(1024, initializer_range=0.3)).eval().to(dtype)
    kw = variant_kw(variant, device)
    pts = torch.rand(16, N_POINTS, 3, device=device) * 2 - 1
    end = int(generate_token_ids(model, pts, 1, 2, max_new_tokens=24)[1, 9])   # a token row 1 emits at step 10 acts as END
    ref = generate_token_ids(model, pts, 1, end, max_new_tokens=80)
    greedy = [shared_prompt_decode(model, pts, 1, end, max_new_tokens=80, **kw) for _ in range(2)]
    parts = pts[:4]
    sample = dict(num_candidates=4, do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=80)
    runs = [shared_prompt_decode(model, parts, 1, end, seed=7, **sample, **kw) for _ in range(3)]
    other = shared_prompt_decode(model, parts, 1, end, seed=8, **sample, **kw)
    alone = shared_prompt_decode(model, parts.repeat_interleave(4, 0), 1, end, seed=7, **{**sample, 'num_candidates': 1}, **kw)
    torch.manual_seed(7)
    theirs = generate_token_ids(model, parts, 1, end, num_candidates=4, do_sample=True, top_p=0.95, max_new_tokens=80)
    same = lambda a, b: a.shape == b.shape and bool(torch.equal(a, b))
    if dtype != torch.float32 and variant != 'matmul':   # bf16: rounding differs from generate's; compare with the matmul path too
        mm = shared_prompt_decode(model, pts, 1, end, max_new_tokens=80, **variant_kw('matmul', device))
        first_diff = lambda a, b: [int((x != y).int().argmax()) if (x != y).any() else len(x) for x, y in zip(a, b)]
        extra = dict(greedy_rows_equal_matmul_path=int((greedy[0] == mm).all(1).sum()) if mm.shape == greedy[0].shape else 0,
                     first_divergence_from_generate=first_diff(greedy[0], ref) if greedy[0].shape == ref.shape else None,
                     matmul_first_divergence_from_generate=first_diff(mm, ref) if mm.shape == ref.shape else None)
    else: extra = {}
    res = dict(variant=variant, dtype=str(dtype).split('.')[-1], **extra, greedy_equal_generate=[same(g, ref) for g in greedy],
               greedy_rows_equal_generate=int((greedy[0] == ref).all(1).sum()) if greedy[0].shape == ref.shape else 0,
               rows_stopped=int((ref == end).any(1).sum()),
               seeded_reproducible=[same(r, runs[0]) for r in runs[1:]], other_seed_differs=not same(other, runs[0]),
               shared_equal_independent=same(alone, runs[0]),
               sampled_rows_equal_generate=int((runs[0] == theirs).all(1).sum()) if runs[0].shape == theirs.shape else 0)
    free(model, device)
    return res


def kernel_check(device, parts=4, candidates=16, prompt_len=257, length=448, hq=12, hkv=2, d=128) -> dict:
    "The flash path's two kernels (bf16, Qwen2-1.5B's heads) against their matmul versions in float32, rows of different lengths."
    torch.manual_seed(0)
    rows, g = parts * candidates, hq // hkv
    q = torch.randn(rows, hq, d, device=device, dtype=torch.bfloat16)
    pk, pv = (torch.randn(parts, prompt_len, hkv, d, device=device, dtype=torch.bfloat16) for _ in range(2))
    sk, sv = (torch.randn(rows * length, hkv, d, device=device, dtype=torch.bfloat16) for _ in range(2))
    used = torch.randint(1, length + 1, (rows,), device=device, dtype=torch.int32)
    steps = torch.arange(rows + 1, device=device, dtype=torch.int32)
    scale, outs = d ** -0.5, {}
    for name, cast in dict(bf16=lambda t: t, fp32=lambda t: t.float()).items():
        qq = cast(q)
        o1, l1 = prefix_flash_attention(queries_by_part(qq, candidates, hkv), cast(pk), cast(pv), scale)
        o2, l2 = suffix_flash_attention(queries_by_part(qq, 1, hkv).reshape(-1, hkv, d), cast(sk), cast(sv), used,
                                        steps * g, steps * length, scale)
        outs[name] = (o1.float(), l1, o2.float(), l2, merge_prefix_suffix(o1, l1, o2, l2, rows).float())
    o3, l3 = suffix_triton_attention(queries_by_part(q, 1, hkv).reshape(-1, hkv, d), sk, sv, used, steps * g, steps * length, scale)
    names = ['prefix_out', 'prefix_lse', 'suffix_out', 'suffix_lse', 'merged']
    return {n: round(float((a - b).abs().max()), 5) for n, a, b in zip(names, outs['bf16'], outs['fp32'])} | \
           dict(triton_suffix_out=round(float((o3.float() - outs['fp32'][2]).abs().max()), 5),
                triton_suffix_lse=round(float((l3 - outs['fp32'][3]).abs().max()), 5),
                bf16_ulp_at_1=2 ** -8, rows=rows, lengths=[int(used.min()), int(used.max())]) | \
           fused_kernel_check(device, parts, candidates, prompt_len, length, hq, hkv, d)


def fused_kernel_check(device, parts, candidates, prompt_len, length, hq, hkv, d) -> dict:
    "`decode_attention`'s kernel (bf16, several key-range counts) against its float32 matmul version: output, log-sum-exp, cache writes."
    torch.manual_seed(1)
    rows = parts * candidates
    bf = lambda *shape: torch.randn(*shape, device=device, dtype=torch.bfloat16)
    qkv, pk, pv, sk, sv = bf(rows, (hq + 2 * hkv) * d), bf(parts, prompt_len, hkv, d), bf(parts, prompt_len, hkv, d), \
                          bf(rows * length, hkv, d), bf(rows * length, hkv, d)
    angles = torch.rand(length, d // 2, device=device) * 6
    cos, sin = (f(torch.cat([angles, angles], -1)).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    used = torch.randint(1, length + 1, (rows,), device=device, dtype=torch.int32)
    ref_k, ref_v = sk.float(), sv.float()
    o_ref, l_ref = decode_attention_matmul(qkv.float(), pk.float(), pv.float(), ref_k, ref_v, cos.float(), sin.float(), used,
                                           candidates, hq, d ** -0.5)
    res = {}
    for splits in (1, 3, 8):
        k2, v2 = sk.clone(), sv.clone()
        o, l = decode_attention(qkv, pk, pv, k2, v2, cos, sin, used, candidates, hq, d ** -0.5, splits)
        res[f'fused_out_splits{splits}'] = round(float((merge_splits(o, l, torch.float32) - o_ref.flatten(1)).abs().max()), 5)
        res[f'fused_lse_splits{splits}'] = round(float((torch.logsumexp(l, 1) - l_ref[:, 0]).abs().max()), 5)
        res[f'fused_cache_k_splits{splits}'] = round(float((k2.float() - ref_k).abs().max()), 5)
        res[f'fused_cache_v_splits{splits}'] = round(float((v2.float() - ref_v).abs().max()), 5)
    return res


def per_layer(make, nbytes: int, layers: int, l2_bytes: float = 50e6) -> list:
    "`layers` inputs as a step reads them: one per layer while one is small enough (under 2x the L2) to be served from the L2 if shared."
    return [make() for _ in range(layers)] if nbytes < 2 * l2_bytes else [make()] * layers


def decode_timing(device, rows, candidates, filled, prompt_len=257, length=768, hq=12, hkv=2, d=128, layers=28, reps=20) -> dict:
    "ms per step (28 layers) of `decode_attention` alone for several key-range counts, every row `filled` slots long."
    bf = lambda *shape: torch.randn(*shape, device=device, dtype=torch.bfloat16)
    parts = rows // candidates
    qkv, cos, sin = bf(rows, (hq + 2 * hkv) * d), bf(length, d), bf(length, d)
    caches = per_layer(lambda: (bf(parts, prompt_len, hkv, d), bf(parts, prompt_len, hkv, d), bf(rows * length, hkv, d),
                                bf(rows * length, hkv, d)), (parts * prompt_len + rows * filled) * hkv * d * 2 * 2, layers)
    used = torch.full((rows,), filled, device=device, dtype=torch.int32)
    shared_bytes = layers * (parts * prompt_len + rows * filled) * hkv * d * 2 * 2
    res = dict(rows=rows, candidates=candidates, filled=filled, auto_splits=decode_splits(rows, hkv, device),
               bytes_floor_ms=round(shared_bytes / 4.8e12 * 1e3, 3), caches_per_layer=caches[0] is not caches[-1])
    for splits in (1, 2, 4, 8, 16):   # a step's 28 calls in a CUDA graph, as the decoder runs them (no launch gaps)
        call = lambda i: decode_attention(qkv, *caches[i], cos, sin, used, candidates, hq, d ** -0.5, splits)
        for _ in range(3): call(0)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(layers): call(i)
        graph.replay()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps): graph.replay()
        stop.record(); torch.cuda.synchronize()
        res[f'splits{splits}_ms_per_step'] = round(start.elapsed_time(stop) / reps, 3)
        del graph
    return res


def suffix_timing(device, rows, filled, length, hq=12, hkv=2, d=128, layers=28, reps=20) -> dict:
    "ms per step (28 layers) of the suffix attention alone, FlashAttention-2's varlen kernel against the Triton one, every row `filled` long."
    g = hq // hkv
    q = torch.randn(rows * g, hkv, d, device=device, dtype=torch.bfloat16)
    caches = per_layer(lambda: [torch.randn(rows * length, hkv, d, device=device, dtype=torch.bfloat16) for _ in range(2)],
                       rows * filled * hkv * d * 2 * 2, layers)
    used = torch.full((rows,), filled, device=device, dtype=torch.int32)
    steps = torch.arange(rows + 1, device=device, dtype=torch.int32)
    res = dict(rows=rows, filled=filled, length=length, caches_per_layer=caches[0] is not caches[-1],
               bytes_floor_ms=round(layers * rows * filled * hkv * d * 2 * 2 / 4.8e12 * 1e3, 3))
    for name, fn in dict(flash=suffix_flash_attention, triton=suffix_triton_attention).items():
        call = lambda i: fn(q, *caches[i], used, steps * g, steps * length, d ** -0.5)
        for _ in range(3): call(0)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(reps * layers): call(i % layers)
        stop.record(); torch.cuda.synchronize()
        res[f'{name}_ms_per_step'] = round(start.elapsed_time(stop) / reps, 3)
    return res


def floors(model, rows, parts, prompt_len, new_tokens, bucket, args, shared=True) -> dict:
    "The step's floors: bytes read (weights, prompt and generated keys/values) over the bandwidth; matmul FLOPs over the peak."
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    suffix = (sum(-(-t // bucket) * bucket for t in range(1, new_tokens)) / max(new_tokens - 1, 1) if shared
              else new_tokens)   # today's static cache: every slot of prompt + max_new_tokens read
    b = decode_step_bytes(model.config, weight_bytes, parts, rows // parts, prompt_len, suffix, shared_prompt=shared)
    return dict(bytes_gb={k: round(v / 1e9, 3) for k, v in b.items()}, memory_floor_ms=round(b['total'] / args.bandwidth * 1e3, 3),
                matmul_floor_ms=round(2 * n_params * rows / args.matmul_flops * 1e3, 3))


def measure(run, device, rows) -> dict:
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    _, first = timed(run, device)   # prefill + compile + record + decode
    ids, dt = timed(run, device)
    return dict(rows=rows, new_tokens=int(ids.shape[1]), first_call_s=round(first, 2), seconds=round(dt, 3),
                samples_per_s=round(rows / dt, 2), ms_per_step=round(1e3 * dt / ids.shape[1], 3),
                compile_and_record_s=round(first - dt, 2),
                peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == 'cuda' else None)


def big_model(args, device):
    torch.manual_seed(args.seed)
    with torch.device(device): model = CADRecode(qwen2_1_5b_config(**json.loads(args.model_kw)))
    return model.to(torch.bfloat16 if args.dtype == 'bf16' else torch.float32).eval()


def table(result) -> str:
    "Markdown: today's figures (greedy, the issue) beside the new path's, with the floors."
    lines = ['| decoder | rows (parts x candidates) | samples/s | ms/step | first call s | peak GB | memory floor ms | matmul floor ms |',
             '|---|---|---|---|---|---|---|---|']
    for rows, (sps, ms) in TODAY.items():
        lines.append(f'| today: `greedy_decode_static`, greedy (issue) | {rows} | {sps} | {ms} | ~40 | - | - | - |')
    for r in result.get('old', []):
        if 'error' not in r:
            lines.append(f"| today, re-measured | {r['rows']} | {r['samples_per_s']} | {r['ms_per_step']} | {r['first_call_s']} | "
                         f"{r['peak_gb']} | {r['memory_floor_ms']} | {r['matmul_floor_ms']} |")
    for r in result.get('sampling', []) + result.get('greedy', []):
        if 'error' in r: lines.append(f"| {r['decoder']} | {r.get('rows')} | error: {r['error'][:60]} | | | | | |"); continue
        lines.append(f"| {r['decoder']} | {r['rows']} ({r['parts']} x {r['candidates']}) | {r['samples_per_s']} | {r['ms_per_step']} | "
                     f"{r['first_call_s']} | {r['peak_gb']} | {r['memory_floor_ms']} | {r['matmul_floor_ms']} |")
    return '\n'.join(lines)


def greedy_rows(model, n, g, variants, start, end, prompt_len, device, args, record):
    "`g` greedy tokens at batch `n`: today's `greedy_decode_static` (unless --skip-today), then each variant of the new path."
    pts = torch.rand(n, N_POINTS, 3, device=device) * 2 - 1
    decoders = {} if args.skip_today else {
        "today's greedy_decode_static": lambda: greedy_decode_static(model, pts, start, end, max_new_tokens=g, min_new_tokens=g)}
    for v in variants:
        decoders[f'new, greedy ({v})'] = lambda v=v: shared_prompt_decode(model, pts, start, end, max_new_tokens=g, min_new_tokens=g,
                                                                          bucket=args.bucket, **variant_kw(v, device))
    for name, run in decoders.items():
        shared = name.startswith('new')
        row = dict(decoder=f'{name}, {g} tokens', parts=n, candidates=1,
                   **floors(model, n, n, prompt_len, g, 1 if any(f in name for f in FLAT) or not shared else args.bucket, args, shared=shared))
        try: row.update(measure(run, device, n))
        except Exception as e: row.update(rows=n, error=f'{type(e).__name__}: {str(e)[:300]}')
        free(model, device); record('greedy', row)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--model-kw', default='{}', help='JSON overrides of the Qwen2-1.5B config (smoke tests)')
    ap.add_argument('--dtype', default='bf16', choices=['bf16', 'fp32'])
    ap.add_argument('--parts', default='16,32,64', help='parts per batch, comma-separated (rows = parts x candidates)')
    ap.add_argument('--candidates', type=int, default=16); ap.add_argument('--temperature', type=float, default=1.0)
    ap.add_argument('--top-p', type=float, default=1.0); ap.add_argument('--new-tokens', type=int, default=400)
    ap.add_argument('--bucket', type=int, default=64, help='suffix lengths read: multiples of this')
    ap.add_argument('--variants', default='triton,matmul',
                    help=f'new-path variants: {", ".join(VARIANTS)}; NAME:S for S key ranges per row')
    ap.add_argument('--transposed-rows', type=int, default=None,
                    help='GATE_UP_TRANSPOSED_ROWS: up to this many rows the gate/up copy is input-major (0: never)')
    ap.add_argument('--decode-tiles', default='', help="BLOCK_N,num_warps,num_stages of the 'fused' kernel (default: DECODE_TILES)")
    ap.add_argument('--suffix-tiles', default='', help="BLOCK_N,num_warps,num_stages of the 'triton' suffix kernel (default: SUFFIX_TILES)")
    ap.add_argument('--greedy-tokens', type=int, default=768)
    ap.add_argument('--greedy-batch', default='64', help='greedy batches, comma-separated')
    ap.add_argument('--skip-today', action='store_true', help="no greedy_decode_static rows (its compile takes ~40 s per batch)")
    ap.add_argument('--old-rows', default='', help="re-measure today's greedy decoder at --new-tokens for these batches")
    ap.add_argument('--skip-agreement', action='store_true')
    ap.add_argument('--bandwidth', type=float, default=4.8e12, help='bytes/s for the memory floor (H200: 4.8e12)')
    ap.add_argument('--matmul-flops', type=float, default=794e12, help='FLOP/s for the matmul floor (measured bf16 on H200)')
    ap.add_argument('--seed', type=int, default=0); ap.add_argument('--out', default='sampling.json')
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.transposed_rows is not None: sampling.GATE_UP_TRANSPOSED_ROWS = args.transposed_rows
    if args.decode_tiles:
        sampling.DECODE_TILES = dict(zip(('BLOCK_N', 'num_warps', 'num_stages'), map(int, args.decode_tiles.split(','))))
    if args.suffix_tiles:
        sampling.SUFFIX_TILES = dict(zip(('BLOCK_N', 'num_warps', 'num_stages'), map(int, args.suffix_tiles.split(','))))
    import transformers
    result = dict(torch=torch.__version__, transformers=transformers.__version__, args=vars(args),
                  gpu=torch.cuda.get_device_name() if device.type == 'cuda' else None)
    def record(section, row):
        result.setdefault(section, []).append(row); print(json.dumps({section: row}), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    variants = args.variants.split(',')
    if not args.skip_agreement:
        if any(map(is_flat, variants)) and device.type == 'cuda':
            try: record('kernels', kernel_check(device))
            except Exception as e: record('kernels', dict(error=f'{type(e).__name__}: {str(e)[:300]}'))
            for rows, k, filled in ((64, 1, 384), (64, 1, 768), (1024, 16, 200), (3072, 16, 200)):
                try: record('decode_timing', decode_timing(device, rows, k, filled))
                except Exception as e: record('decode_timing', dict(rows=rows, error=f'{type(e).__name__}: {str(e)[:300]}'))
            for rows, filled, length in ((1024, 200, 448), (2048, 200, 448), (64, 400, 768)):
                try: record('suffix_timing', suffix_timing(device, rows, filled, length))
                except Exception as e: record('suffix_timing', dict(rows=rows, error=f'{type(e).__name__}: {str(e)[:300]}'))
        for v in variants:
            for dtype in ([torch.float32, torch.bfloat16] if is_flat(v) else [torch.float32]):
                try: record('agreement', agreement(device, v, dtype))
                except Exception as e: record('agreement', dict(variant=v, dtype=str(dtype), error=f'{type(e).__name__}: {str(e)[:300]}'))
    model = big_model(args, device)
    start, end = (START, END) if model.config.vocab_size > START else (1, 2)   # a shrunken vocabulary (smoke runs)
    prompt_len, k = N_POINTS + 1, args.candidates
    for v in variants:
        for parts in [int(p) for p in args.parts.split(',') if p]:
            rows, pts = parts * k, torch.rand(parts, N_POINTS, 3, device=device) * 2 - 1
            run = lambda: shared_prompt_decode(model, pts, start, end, num_candidates=k, do_sample=True,
                                               temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.new_tokens,
                                               min_new_tokens=args.new_tokens, seed=args.seed, bucket=args.bucket,
                                               **variant_kw(v, device))
            row = dict(decoder=f'new, sampled ({v})', parts=parts, candidates=k,
                       **floors(model, rows, parts, prompt_len, args.new_tokens, 1 if is_flat(v) else args.bucket, args))
            try: row.update(measure(run, device, rows))
            except Exception as e: row.update(rows=rows, error=f'{type(e).__name__}: {str(e)[:300]}')
            free(model, device); record('sampling', row)
    for n in [int(b) for b in args.greedy_batch.split(',') if b]:
        greedy_rows(model, n, args.greedy_tokens, variants, start, end, prompt_len, device, args, record)
    for rows in (map(int, args.old_rows.split(',')) if args.old_rows else []):
        pts = torch.rand(rows, N_POINTS, 3, device=device) * 2 - 1
        run = lambda: greedy_decode_static(model, pts, start, end, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
        row = dict(decoder="today's greedy_decode_static", **floors(model, rows, rows, prompt_len, args.new_tokens, 1, args, shared=False))
        try: row.update(measure(run, device, rows))
        except Exception as e: row.update(rows=rows, error=f'{type(e).__name__}: {str(e)[:300]}')
        free(model, device); record('old', row)
    result['table'] = table(result); print(result['table'], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    sys.exit(main())
