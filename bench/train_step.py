"""The kit's training step against the straightforward one, on the same GPU, in the same process.

    python bench/train_step.py --peer .bench_peer/naive_hf_step.py --lengths data:data/small --out train_step.json

The straightforward step is `naive_hf_step.py` (HF Qwen2ForCausalLM, padded batches, full-vocabulary logits,
fused AdamW), run unchanged through its own `main()`. The kit's step is `cadrecode_nb.trainer.train_step`, the
function `train` calls, run as `train` runs it (`run_steps`: each step's numbers read one step late), on `CADRecode`
with Qwen2-1.5B shapes and random weights. Both keep float32 master weights
under bf16 autocast (`--weights fp32` for the peer), the paper recipe's precision. Both cannot live on one GPU at
once, so every round builds each variant afresh, in turn: [peer, kit variants...] x rounds; the table quotes the
median over rounds of each run's mean step time.

Variants: `kit` = packed rows + varlen attention + fused linear cross-entropy + compiled layers;
`kit-nocompile` = the same without torch.compile; `kit-padded` = padded rows + fused loss (no packing, no compile).

`--numerics`: the same weights and the same batch through the straightforward computation (HF loss over full logits,
padded) and the kit's (packed, fused): the two losses and the relative gradient difference.
`--curve N`: N steps of both on the same real batches from `--data`, from the same initial weights: loss curves.
`--generate`: KV-cached generation of `--new-tokens` tokens at batch 1, 16, 64 with each decoder of `--caches`.
`--profile N`: GPU time of N kit steps by kernel kind (matmul, attention, optimizer, compiled, ...), and the GPU's idle
time split by whose turn it was (`idle_split`: the host had not launched the next kernel yet, or it was queued).
"""
import argparse, contextlib, copy, gc, importlib.util, io, json, math, random, statistics, sys, time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.autograd import DeviceType

from cadrecode_nb.dataset import CADRecodeDataset, PointCodeCollator, load_tokenizer
from cadrecode_nb import model as kit_model
from cadrecode_nb.model import (CADRecode, PACKED_ATTENTION, generate_token_ids, greedy_decode_static, qwen2_1_5b_config,
                                use_attention)
from cadrecode_nb.trainer import read_step, train_step
from cadrecode_nb.run_parts import TrainConfig, autocast_for, make_grad_scaler, make_optimizer
from cadrecode_nb.speed import compile_layers
from cadrecode_nb.checkpoints import count_parameters

VARIANTS = {'kit': dict(pack=True, compile=True), 'kit-nocompile': dict(pack=True, compile=False),
            'kit-padded': dict(pack=False, compile=False)}
START, END = 151644, 151643   # Qwen2's <|im_start|> and <|endoftext|>
N_POINTS = 256


def load_peer(path):
    spec = importlib.util.spec_from_file_location('naive_hf_step', path)
    peer = importlib.util.module_from_spec(spec); spec.loader.exec_module(peer)
    return peer


def length_pool(spec:str, seed:int=0) -> list[int]:
    "Code-token lengths: 'data:DIR' or 'qwen2:DIR' (DIR's train programs under DIR's tokenizer or Qwen2's), 'uniform:LO:HI' or a JSON list file."
    if spec.startswith(('data:', 'qwen2:')):
        kind, _, root = spec.partition(':'); root = Path(root)
        tok = load_tokenizer(root/'tokenizer' if kind == 'data' else 'qwen2')
        return [len(t) for t in tok(CADRecodeDataset(root, 'train').codes, add_special_tokens=False)['input_ids']]
    if spec.startswith('uniform:'):
        lo, hi = map(int, spec.split(':')[1:]); rng = random.Random(seed)
        return [rng.randint(lo, hi) for _ in range(10000)]
    return json.loads(Path(spec).read_text())


def free_cuda():
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()


def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float: return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float('nan')


def run_peer(peer, lengths_file:str, args) -> dict:
    "The straightforward step, through its own main(); its JSON line parsed."
    argv = ['naive_hf_step.py', '--lengths', lengths_file, '--batch', str(args.batch), '--steps', str(args.steps),
            '--warmup', str(args.warmup), '--weights', 'fp32', '--seed', str(args.seed)]
    old, sys.argv, buf = sys.argv, argv, io.StringIO()
    try:
        with contextlib.redirect_stdout(buf): peer.main()
    finally: sys.argv = old
    free_cuda()
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def ids_collator(pack:bool, pad:int|None=None) -> PointCodeCollator:
    "The kit's collator over token ids (no tokenizer needed: only the special ids are read)."
    tok = SimpleNamespace(convert_tokens_to_ids=lambda t: START if t == '<|im_start|>' else END, pad_token_id=END)
    return PointCodeCollator(tok, pack=pack, pad_to_multiple_of=pad)


def random_batches(pool, args, pack:bool, n:int, vocab:int, pad:int|None=None) -> list[list[dict]]:
    "n steps of micro-batches, lengths drawn as the peer draws them (same seed, same sequence of lengths)."
    rng, g = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    collate, micro = ids_collator(pack, pad), args.micro or args.batch
    steps = []
    for _ in range(n):
        lens = [rng.choice(pool) for _ in range(args.batch)]
        codes = [torch.randint(0, vocab - 1000, (k,), generator=g).tolist() for k in lens]
        pts = torch.rand(args.batch, N_POINTS, 3, generator=g) * 2 - 1
        steps.append([collate.collate_ids(codes[i:i + micro], pts[i:i + micro]) for i in range(0, args.batch, micro)])
    return steps


def kit_setup(variant:str, args, device):
    opts = VARIANTS[variant]
    cfg = TrainConfig.load('paper', [f"pack={str(opts['pack']).lower()}", f"compile={str(opts['compile']).lower()}",
                                'model=qwen2-1.5b', f'pad_to_multiple_of={args.pad}', f'batch_size={args.batch}', f'micro_batch_size={args.micro or args.batch}'])
    torch.manual_seed(args.seed)
    with torch.device(device): model = CADRecode(qwen2_1_5b_config(**json.loads(args.model_kw)))
    if cfg.pack: use_attention(model)
    if cfg.compile: compile_layers(model)
    model.train()
    return cfg, model, make_optimizer(model, cfg, device), make_grad_scaler(device, cfg.dtype), autocast_for(device, cfg.dtype)


def run_steps(batches, launch) -> tuple[list[dict], float]:
    """`launch(i, micro)` (a `train_step` call) over `batches` as `train` runs them: each step's numbers read one step
    late, so the host queues a step while the GPU finishes the one before. (the steps' numbers, seconds per step)"""
    t, prev, outs = time.perf_counter(), None, []
    for i, micro in enumerate(batches):
        numbers = launch(i, micro)
        if prev is not None: outs.append(read_step(prev))
        prev = numbers
    if prev is not None: outs.append(read_step(prev))
    return outs, (time.perf_counter() - t) / max(len(batches), 1)


def run_kit(variant:str, pool, args, peak:float, device) -> dict:
    cfg, model, opt, scaler, ctx = kit_setup(variant, args, device)
    batches = random_batches(pool, args, cfg.pack, args.warmup + args.steps, model.config.vocab_size, cfg.pad_to_multiple_of or None)
    launch = lambda i, micro: train_step(model, model, micro, opt, scaler, cfg, device, ctx, step=i + 1)
    run_steps(batches[:args.warmup], launch)
    sync()
    outs, dt = run_steps(batches[args.warmup:], launch)
    n_params = count_parameters(model)
    real = statistics.mean(o['tokens'] for o in outs)
    padded = statistics.mean(sum(b['input_ids'].numel() for b in micro) for micro in batches[args.warmup:])
    row = dict(impl=variant, s_per_step=round(dt, 4), real_tokens_per_step=round(real), padded_tokens_per_step=round(padded),
               tokens_per_s=round(real / dt), mfu=round(6 * n_params * real / dt / peak, 3),
               peak_mem_gb=round(peak_gb(), 1), hours_per_100k_steps=round(dt * 1e5 / 3600, 2),
               last_loss=round(outs[-1]['loss'], 4))
    del model, opt; free_cuda()
    return row


def table(rows:list[dict], peak:float) -> str:
    "Median over rounds per implementation, as a markdown table."
    by = {}
    for r in rows: by.setdefault(r['impl'], []).append(r)
    base = statistics.median(r['s_per_step'] for r in by['naive_hf'])
    keys = ['s_per_step', 'real_tokens_per_step', 'padded_tokens_per_step', 'tokens_per_s', 'mfu', 'peak_mem_gb', 'hours_per_100k_steps']
    out = ['| implementation | ' + ' | '.join(keys) + ' | x straightforward | rounds |', '|' + '---|' * (len(keys) + 3)]
    for impl, rs in by.items():
        med = {k: statistics.median(r[k] for r in rs) for k in keys}
        out.append(f'| {impl} | ' + ' | '.join(f'{med[k]:g}' for k in keys) + f" | {med['s_per_step'] / base:.3f} | {len(rs)} |")
    out.append(f'\nmatmul peak (bf16, 8192^3, measured in this run): {peak / 1e12:.0f} TFLOP/s')
    return '\n'.join(out)


def peer_style_loss(hf, proj, batch:dict, ctx) -> torch.Tensor:
    "The straightforward computation on a kit padded batch: projected points + embedded ids, HF's full-logits loss."
    with ctx:
        x = torch.cat([proj(batch['points']), hf.get_input_embeddings()(batch['input_ids'][:, N_POINTS:])], 1)
        return hf(inputs_embeds=x, attention_mask=batch['attention_mask'], labels=batch['labels']).loss


def peer_model_from(kit:CADRecode, peer, device):
    "The peer's model classes holding the kit model's weights."
    from transformers import Qwen2ForCausalLM
    with torch.device(device): hf = Qwen2ForCausalLM._from_config(copy.deepcopy(kit.config), attn_implementation='sdpa')
    sd = {k: v for k, v in kit.state_dict().items() if not k.startswith('point_encoder')}
    hf.load_state_dict(sd, strict=False)
    proj = peer.FourierProjector(kit.config.hidden_size).to(device)
    proj.proj.load_state_dict(kit.point_encoder.projection.state_dict())
    return hf, proj


def numerics(peer, pool, args, device) -> dict:
    "Same weights, same batch: the straightforward loss and gradients against the kit's."
    cfg, kit, _, _, ctx = kit_setup('kit-nocompile', args, device)
    hf, proj = peer_model_from(kit, peer, device)
    one = argparse.Namespace(**{**vars(args), 'micro': 0})   # the same samples, padded and packed, as one micro-batch
    codes, packed = (random_batches(pool, one, pack, 1, kit.config.vocab_size, cfg.pad_to_multiple_of if pack else None)[0][0]
                     for pack in (False, True))   # the peer's padded rows as it pads them; the kit's as the trainer does
    to = lambda b: {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
    ref = peer_style_loss(hf, proj, to(codes), ctx); ref.backward()
    with ctx: mine = kit(**to(packed)).loss
    mine.backward()
    g_ref = torch.cat([hf.model.layers[0].mlp.down_proj.weight.grad.flatten(), hf.lm_head.weight.grad.flatten()])
    g_kit = torch.cat([kit.model.layers[0].mlp.down_proj.weight.grad.flatten(), kit.lm_head.weight.grad.flatten()])
    res = dict(loss_straightforward=ref.item(), loss_kit=mine.item(), abs_diff=abs(ref.item() - mine.item()),
               grad_rel_diff=((g_ref - g_kit).norm() / g_ref.norm()).item(),
               grad_cosine=torch.nn.functional.cosine_similarity(g_ref, g_kit, dim=0).item())
    del kit, hf, proj; free_cuda()
    return res


def curves(peer, args, device) -> dict:
    "`args.curve` steps of the kit's step and of the straightforward step on the same real batches, same initial weights."
    ds, tok = CADRecodeDataset(args.data, 'train'), load_tokenizer(Path(args.data)/'tokenizer')
    rng = random.Random(args.seed)
    order = [[ds[rng.randrange(len(ds))] for _ in range(args.batch)] for _ in range(args.curve)]
    out = {}
    for name in ('kit', 'straightforward'):
        cfg, kit, opt, scaler, ctx = kit_setup('kit' if name == 'kit' else 'kit-padded', args, device)
        collate, losses, t0 = PointCodeCollator(tok, pack=cfg.pack, pad_to_multiple_of=cfg.pad_to_multiple_of or None), [], time.perf_counter()
        if name == 'kit':
            outs, _ = run_steps(order, lambda i, items: train_step(kit, kit, [collate(items)], opt, scaler, cfg, device, ctx, step=i + 1))
            losses = [o['loss'] for o in outs]
        else:
            hf, proj = peer_model_from(kit, peer, device); del kit, opt; free_cuda()
            params = list(hf.parameters()) + list(proj.parameters())
            opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                    weight_decay=cfg.weight_decay, fused=True)
            for items in order:   # the peer's step: loss, backward, clip, step (constant lr, no decay groups: see notes)
                b = {k: v.to(device) for k, v in collate(items).items()}
                loss = peer_style_loss(hf, proj, b, ctx); loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
        out[name] = dict(loss=losses, seconds=time.perf_counter() - t0)
        free_cuda()
    return out


DECODERS = {   # name -> (attention implementation, how to decode)
    'dynamic': ('sdpa', dict(cache_implementation=None)),          # transformers' generate, DynamicCache
    'static': ('sdpa', dict(cache_implementation='static')),       # generate, StaticCache, compiled step
    'static-kitattn': (PACKED_ATTENTION, dict(cache_implementation='static')),   # + the GQA-aware one-query attention
    'graphed': (PACKED_ATTENTION, None),                            # the kit's greedy_decode_static (CUDA graph per step)
}


def decoder_agreement(device) -> dict:
    "On a small float32 model with well-separated logits: the graphed decoder's tokens against `generate`'s."
    from cadrecode_nb.model import tiny_config
    torch.manual_seed(0)
    with torch.device(device): model = CADRecode(tiny_config(1024, initializer_range=0.3)).eval()
    pts = torch.rand(8, N_POINTS, 3, device=device) * 2 - 1
    end = int(generate_token_ids(model, pts, 1, 2, max_new_tokens=24)[1, 9])   # a token row 1 emits at step 10 acts as END
    ref = generate_token_ids(model, pts, 1, end, max_new_tokens=64)
    runs = [greedy_decode_static(model, pts, 1, end, max_new_tokens=64) for _ in range(3)]   # capture, then replays
    res = dict(shape=list(ref.shape), rows_stopped=int((ref == end).any(1).sum()),
               equal=[r.shape == ref.shape and bool(torch.equal(r, ref)) for r in runs])
    print(json.dumps(dict(decoder_agreement=res)), flush=True)
    return res


def generation(args, device) -> list[dict]:
    "Samples/s of KV-cached greedy generation of exactly `new_tokens` tokens (END is masked until then)."
    torch.manual_seed(args.seed)
    with torch.device(device): model = CADRecode(qwen2_1_5b_config(**json.loads(args.model_kw)))
    model = model.to(torch.bfloat16).eval()
    rows = []
    for cache in args.caches.split(','):
        attention, how = DECODERS[cache]
        use_attention(model, attention)
        for bs in map(int, args.gen_batches.split(',')):
            pts = torch.rand(bs, N_POINTS, 3, device=device) * 2 - 1
            if how is None:
                run = lambda: greedy_decode_static(model, pts, START, END, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            else:
                run = lambda: generate_token_ids(model, pts, START, END, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **how)
            try:
                t = time.perf_counter(); run(); torch.cuda.synchronize(); first = time.perf_counter() - t   # warm-up (compiles)
                t = time.perf_counter(); ids = run(); torch.cuda.synchronize(); dt = time.perf_counter() - t
            except Exception as e:   # e.g. a compiler failure for one cache kind: record it, go on
                rows.append(dict(cache=cache, batch=bs, error=f'{type(e).__name__}: {str(e)[:300]}')); print(json.dumps(rows[-1]), flush=True)
                continue
            rows.append(dict(cache=cache, batch=bs, new_tokens=int(ids.shape[1]), seconds=round(dt, 3), first_call_s=round(first, 1),
                             samples_per_s=round(bs / dt, 2), s_per_sample=round(dt / bs, 3), ms_per_token_step=round(1e3 * dt / ids.shape[1], 2)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


KERNEL_KINDS = [   # (kind, substrings of CUDA kernel names), first match wins
    ('attention', ('flash', 'fmha', 'attention')),
    ('matmul', ('gemm', 'nvjet', 'cutlass', 'xmma', 'matmul', 'cublas')),
    ('optimizer', ('adam', 'multi_tensor')),
    ('compiled (triton)', ('triton',)),
    ('reduction', ('reduce', 'norm', 'logsumexp', 'softmax')),
    ('copy / cast / fill', ('copy', 'cast', 'fill', 'to_copy', 'cat', 'index')),
]


def kernel_kind(name:str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), 'other elementwise')


def idle_split(prof, steps:int) -> dict:
    """GPU idle time per step, split by whose turn it was. Before each kernel that starts after the previous one ended,
    the gap is `host_late` up to when the host's launch call for it returned (the GPU had nothing queued), `queued` after
    that (the kernel was waiting on the device side: launch latency, stream dependencies)."""
    evs = prof.profiler.kineto_results.events()
    launched = {e.correlation_id(): e.end_ns() for e in evs if e.device_type() == DeviceType.CPU and e.name().startswith('cu')
                and any(k in e.name() for k in ('Launch', 'Memcpy', 'Memset'))}
    kernels = sorted((e.start_ns(), e.end_ns(), e.correlation_id()) for e in evs if e.device_type() == DeviceType.CUDA)
    host_late = queued = 0; matched = 0; hist = {}
    prev_end = kernels[0][1] if kernels else 0
    for start, end, corr in kernels[1:]:
        if start > prev_end:
            gap, ready = start - prev_end, launched.get(corr)
            matched += ready is not None
            late = min(max((ready or prev_end) - prev_end, 0), gap)
            host_late += late; queued += gap - late
            b = '<5us' if gap < 5e3 else '5-50us' if gap < 5e4 else '50-500us' if gap < 5e5 else '>=0.5ms'
            hist[b] = hist.get(b, 0) + gap
        prev_end = max(prev_end, end)
    return dict(host_late_ms=round(host_late / 1e6 / steps, 2), queued_ms=round(queued / 1e6 / steps, 2),
                gaps_matched_to_launch=matched, idle_ms_by_gap_size={k: round(v / 1e6 / steps, 2) for k, v in sorted(hist.items())})


def profile_kit(pool, args, device, variant='kit') -> dict:
    "GPU time of the kit's step by kernel kind (torch.profiler over `--profile` steps after warm-up)."
    from torch.profiler import ProfilerActivity, profile
    cfg, model, opt, scaler, ctx = kit_setup(variant, args, device)
    batches = random_batches(pool, args, cfg.pack, args.warmup + args.profile, model.config.vocab_size, cfg.pad_to_multiple_of or None)
    launch = lambda i, micro: train_step(model, model, micro, opt, scaler, cfg, device, ctx, step=i + 1)
    run_steps(batches[:args.warmup], launch)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _, wall = run_steps(batches[args.warmup:], launch)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    by_kind, by_name = {}, {}
    kernels = [e for e in kernels if not e.name.startswith('Optimizer.')]   # a CPU-side annotation mirrored on the GPU row
    for e in kernels:
        us = e.time_range.elapsed_us() / args.profile
        by_kind[kernel_kind(e.name)] = by_kind.get(kernel_kind(e.name), 0) + us
        by_name[e.name] = by_name.get(e.name, 0) + us
    timeline = sorted((e.time_range.start, e.time_range.end, e.name) for e in kernels)
    gaps = sorted(((b[0] - a[1], a[2][:70], b[2][:70]) for a, b in zip(timeline, timeline[1:]) if b[0] > a[1]), reverse=True)
    busy = sum(by_kind.values()) / 1e6
    res = dict(variant=variant, wall_s_per_step=round(wall, 4), gpu_busy_s_per_step=round(busy, 4),
               kinds_ms={k: round(v / 1e3, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
               gpu_idle_ms_per_step=round(sum(g[0] for g in gaps) / 1e3 / args.profile, 2),
               idle=idle_split(prof, args.profile),
               largest_gaps_ms=[(round(g / 1e3, 2), before, after) for g, before, after in gaps[:15]],
               top_kernels_ms=[(n[:120], round(v / 1e3, 2)) for n, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:40]],
               ops=prof.key_averages().table(sort_by='self_device_time_total', row_limit=40, max_name_column_width=60))
    del model, opt, prof; free_cuda()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--peer', default='.bench_peer/naive_hf_step.py', help='path of naive_hf_step.py')
    ap.add_argument('--lengths', default='uniform:120:700', help="'data:DIR', 'qwen2:DIR', 'uniform:LO:HI' or a JSON list")
    ap.add_argument('--data', default='data/small', help='dataset for --curve')
    ap.add_argument('--batch', type=int, default=18); ap.add_argument('--micro', type=int, default=0, help='micro-batch (0 = batch)')
    ap.add_argument('--steps', type=int, default=10); ap.add_argument('--warmup', type=int, default=4)
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--variants', default='kit,kit-nocompile,kit-padded')
    ap.add_argument('--numerics', action='store_true'); ap.add_argument('--curve', type=int, default=0)
    ap.add_argument('--generate', action='store_true'); ap.add_argument('--new-tokens', type=int, default=768)
    ap.add_argument('--gen-batches', default='1,16,64')
    ap.add_argument('--caches', default='dynamic,static,static-kitattn,graphed', help=f'decoders: {", ".join(DECODERS)}')
    ap.add_argument('--pad', type=int, default=64, help="the kit's pad_to_multiple_of (0 = off)")
    ap.add_argument('--skip-speed', action='store_true'); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--profile', type=int, default=0, help='profile this many steps of the kit variant: GPU time by kernel kind')
    ap.add_argument('--model-kw', default='{}', help='JSON overrides of the Qwen2-1.5B config (smoke tests)')
    ap.add_argument('--out', default='train_step.json')
    args = ap.parse_args()
    device = torch.device('cuda')
    torch.backends.cuda.matmul.allow_tf32 = True
    peer, pool = load_peer(args.peer), length_pool(args.lengths, args.seed)
    lengths_file = Path(args.out).with_suffix('.lengths.json'); lengths_file.write_text(json.dumps(pool))
    result = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(), args=vars(args),
                  lengths=dict(n=len(pool), mean=statistics.mean(pool), min=min(pool), max=max(pool)))
    import transformers; result['transformers'] = transformers.__version__
    result['varlen_attn'] = kit_model._TORCH_VARLEN is not None; print(json.dumps({k: result[k] for k in ('torch', 'transformers', 'gpu', 'varlen_attn', 'lengths')}), flush=True)
    if not args.skip_speed:
        peak, rows = peer.matmul_peak(), []
        for r in range(args.rounds):
            rows.append(run_peer(peer, str(lengths_file), args)); print(json.dumps(rows[-1]), flush=True)
            for v in args.variants.split(','):
                try: rows.append(run_kit(v, pool, args, peak, device)); print(json.dumps(rows[-1]), flush=True)
                except Exception as e:   # one variant failing (e.g. the compiler) must not lose the others
                    print(f'{v}: {type(e).__name__}: {str(e)[:300]}', flush=True); result.setdefault('failed', []).append(v); free_cuda()
        result.update(peak_flops=peak, rows=rows, table=table(rows, peak))
        print(result['table'], flush=True)
    if args.profile:
        result['profile'] = profile_kit(pool, args, device)
        print(result['profile']['ops']); print(json.dumps({k: v for k, v in result['profile'].items() if k != 'ops'}, indent=1), flush=True)
    if args.numerics: result['numerics'] = numerics(peer, pool, args, device); print(json.dumps(result['numerics']), flush=True)
    if args.curve: result['curves'] = curves(peer, args, device); print({k: v['loss'][::20] for k, v in result['curves'].items()}, flush=True)
    if args.generate: result['decoder_agreement'], result['generation'] = decoder_agreement(device), generation(args, device)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    sys.exit(main())
