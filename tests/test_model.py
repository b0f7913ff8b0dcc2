"""Tests of `cadrecode_nb.projector` and `cadrecode_nb.model`: loss, generation, checkpoints, sizes, and a tiny
model that overfits 8 procedural programs and regenerates programs that build the right solids."""
import math, tempfile, time
import numpy as np, pytest, torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Qwen2ForCausalLM, logging as hf_logging
from cadrecode_nb.projector import FourierPointEncoder, fourier_features
from cadrecode_nb.model import (CADRecode, tiny_config, qwen2_1_5b_config, generate_token_ids, generate_greedy_uncached,
                                decode_programs, generate_programs)

hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
N_PTS, START_ID, END_ID, VOCAB = 256, 1, 2, 512


def toy_batch(code_lengths, vocab=VOCAB, seed=0):
    "Random code ids in the kit's layout: [256 point slots][START][code][END][right padding]."
    g = torch.Generator().manual_seed(seed)
    L = N_PTS + 2 + max(code_lengths)
    ids = torch.full((len(code_lengths), L), END_ID)
    labels, mask = torch.full_like(ids, -100), torch.zeros_like(ids)
    for i, n in enumerate(code_lengths):
        ids[i, N_PTS] = START_ID
        ids[i, N_PTS + 1:N_PTS + 1 + n] = torch.randint(3, vocab, (n,), generator=g)
        labels[i, N_PTS + 1:N_PTS + 2 + n] = ids[i, N_PTS + 1:N_PTS + 2 + n]
        mask[i, :N_PTS + 2 + n] = 1
    return dict(input_ids=ids, attention_mask=mask, labels=labels,
                points=torch.rand(len(code_lengths), N_PTS, 3, generator=g) * 2 - 1)


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return CADRecode(tiny_config(VOCAB))


@pytest.fixture(scope='module')
def wild():
    "A random model with a large init scale: its greedy outputs vary, so decoder disagreements would show."
    torch.manual_seed(0)
    return CADRecode(tiny_config(VOCAB, initializer_range=0.3)).eval()


# ---------------------------------------------------------------- projector
def test_projector_formula_shape_dtype_equivariance():
    p = torch.tensor([[0.3, -0.7, 0.9]])
    by_hand = [*p[0].tolist()] + [math.sin(p[0, c].item() * 2 ** k) for c in range(3) for k in range(8)] \
              + [math.cos(p[0, c].item() * 2 ** k) for c in range(3) for k in range(8)]
    assert torch.allclose(fourier_features(p)[0], torch.tensor(by_hand), atol=1e-6)
    enc = FourierPointEncoder(64).requires_grad_(False)
    x = torch.rand(2, 256, 3) * 2 - 1
    assert enc(x).shape == (2, 256, 64) and enc(x).dtype == torch.float32
    assert enc(x, dtype=torch.bfloat16).dtype == torch.bfloat16
    perm = torch.randperm(256)
    assert torch.allclose(enc(x[:, perm]), enc(x)[:, perm], atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16): assert torch.equal(enc(x), enc(x.double()))


# ---------------------------------------------------------------- loss
def test_loss_equals_full_logits_cross_entropy(tiny):
    batch = toy_batch([30, 12, 45])
    with torch.no_grad():
        out = tiny(**batch, return_logits=True)
        ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB).float(), batch['labels'][:, 1:].reshape(-1))
        assert torch.allclose(out.loss, ref, atol=1e-5)
        assert tiny(**batch).logits is None                            # no logits unless asked
        assert abs(out.loss.item() - math.log(VOCAB)) < 0.15          # untrained: about uniform


def test_loss_ignores_point_slot_and_padding_ids(tiny):
    batch = toy_batch([30, 12, 45])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ref = tiny(**batch).loss
        for sel in (torch.arange(batch['input_ids'].shape[1]) < N_PTS, batch['attention_mask'] == 0):
            changed = {k: v.clone() for k, v in batch.items()}
            sel = sel.expand_as(changed['input_ids'])
            changed['input_ids'][sel] = torch.randint(3, VOCAB, (int(sel.sum()),), generator=g)
            assert torch.allclose(tiny(**changed).loss, ref, atol=1e-6, rtol=0)
        moved = {**batch, 'points': torch.rand_like(batch['points'])}
        assert abs(tiny(**moved).loss - ref) > 1e-5                   # but the coordinates matter


def test_chunked_checkpointed_loss_same_value_and_gradients(tiny):
    batch = toy_batch([30, 12, 45])
    def run(chunk):
        tiny.zero_grad(); tiny.loss_chunk_size = chunk
        loss = tiny(**batch).loss; loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in tiny.named_parameters()}
    try: (l1, g1), (l5, g5) = run(10_000), run(5)
    finally: tiny.loss_chunk_size = CADRecode.loss_chunk_size; tiny.zero_grad()
    assert torch.allclose(l1, l5, atol=1e-5)
    for n in g1: assert torch.allclose(g1[n], g5[n], atol=1e-6), n
    with torch.no_grad():
        assert torch.allclose(tiny(**batch, num_items_in_batch=4 * 90).loss, l1 / 4, atol=1e-5)   # 90 labels


def test_bad_points_named_in_error(tiny):
    batch = toy_batch([5])
    with pytest.raises(ValueError, match='points'): tiny(**{**batch, 'points': batch['points'][..., :2]})
    with pytest.raises(ValueError, match='point slots'):
        tiny(input_ids=batch['input_ids'][:, :10], points=batch['points'])


# ---------------------------------------------------------------- generation
def test_kv_cache_matches_uncached_loop_and_batching(wild):
    clouds = torch.rand(3, N_PTS, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    probe = generate_token_ids(wild, clouds, START_ID, 0, max_new_tokens=20)
    end = int(probe[0, 7])                                             # make row 0 stop after 8 tokens
    cached = generate_token_ids(wild, clouds, START_ID, end, max_new_tokens=20)
    assert torch.equal(cached, generate_greedy_uncached(wild, clouds, START_ID, end, max_new_tokens=20))
    assert len(set(cached[1].tolist())) > 8                            # a varied output, not one token repeated
    first_end = (cached[0] == end).nonzero()[0].item()
    assert first_end <= 7 and (cached[0, first_end:] == end).all()
    for i in range(3):
        single = generate_token_ids(wild, clouds[i:i + 1], START_ID, end, max_new_tokens=20)[0]
        assert torch.equal(cached[i, :len(single)], single)


def test_sampling_candidates_grouped_and_knobs_reach_processors(wild):
    clouds = torch.rand(2, N_PTS, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    greedy = generate_token_ids(wild, clouds, START_ID, 0, max_new_tokens=10)
    for kw in (dict(temperature=1e-4), dict(top_p=1e-6)):
        cands = generate_token_ids(wild, clouds, START_ID, 0, num_candidates=4, do_sample=True, max_new_tokens=10, **kw)
        assert torch.equal(cands, greedy.repeat_interleave(4, dim=0))
    torch.manual_seed(0)
    hot = generate_token_ids(wild, clouds, START_ID, 0, num_candidates=4, do_sample=True, max_new_tokens=10)
    assert len({tuple(r) for r in hot[:4].tolist()}) > 1
    with pytest.raises(ValueError, match='do_sample'): generate_token_ids(wild, clouds, START_ID, 0, num_candidates=2)


def test_generate_programs_decodes_and_batches():
    from cadrecode_nb.dataset import train_code_tokenizer
    from cadrecode_nb.core import START_TOKEN, END_TOKEN
    progs = ["import cadquery as cq\nw0=cq.Workplane('XY',origin=(0,0,%d))\nr=w0.box(%d,20,30)" % (i, 10 + i)
             for i in range(40)]
    tok = train_code_tokenizer(progs, vocab_size=300)
    start, end = (tok.convert_tokens_to_ids(t) for t in (START_TOKEN, END_TOKEN))
    ids = tok(progs[0], add_special_tokens=False)['input_ids']
    rows = torch.tensor([ids + [end, 40, 41],      # junk after END is cut
                         ids + [end] * 3,          # END-padded
                         [start] + ids + [end] * 2])   # a stray special token is dropped
    assert decode_programs(tok, rows, end) == [progs[0]] * 3
    assert decode_programs(tok, rows) == [progs[0]] * 3   # END looked up by name
    torch.manual_seed(0)
    model = CADRecode(tiny_config(len(tok), initializer_range=0.3)).eval()
    clouds = torch.rand(3, N_PTS, 3) * 2 - 1
    a = generate_programs(model, tok, clouds, max_new_tokens=12)
    b = generate_programs(model, tok, clouds.numpy(), max_new_tokens=12, batch_size=2)
    assert a == b and len(a) == 3 and all(len(x) == 1 and isinstance(x[0], str) for x in a)
    s = generate_programs(model, tok, clouds, num_candidates=3, do_sample=True, max_new_tokens=6)
    assert [len(x) for x in s] == [3, 3, 3]


# ---------------------------------------------------------------- checkpoints and sizes
def official_state_dict(cfg, seed=0):
    "Random tensors under the key names and shapes of an official CAD-Recode v1.5 checkpoint (spelled out here)."
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (H // cfg.num_attention_heads)
    shapes = {'model.embed_tokens.weight': (V, H), 'model.norm.weight': (H,),
              'point_encoder.projection.weight': (H, 51), 'point_encoder.projection.bias': (H,)}
    for i in range(cfg.num_hidden_layers):
        p = f'model.layers.{i}.'
        for name, s in [('self_attn.q_proj.weight', (H, H)), ('self_attn.q_proj.bias', (H,)),
                        ('self_attn.k_proj.weight', (kv, H)), ('self_attn.k_proj.bias', (kv,)),
                        ('self_attn.v_proj.weight', (kv, H)), ('self_attn.v_proj.bias', (kv,)),
                        ('self_attn.o_proj.weight', (H, H)), ('mlp.gate_proj.weight', (I, H)),
                        ('mlp.up_proj.weight', (I, H)), ('mlp.down_proj.weight', (H, I)),
                        ('input_layernorm.weight', (H,)), ('post_attention_layernorm.weight', (H,))]:
            shapes[p + name] = s
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_official_key_names_load_without_missing_or_unexpected(dtype, tmp_path):
    cfg = tiny_config(VOCAB, num_hidden_layers=2, architectures=['CADRecode'])
    sd = official_state_dict(cfg)
    cfg.save_pretrained(tmp_path)
    save_file(sd, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
    model, info = CADRecode.from_pretrained(tmp_path, output_loading_info=True, dtype=dtype)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    state = model.state_dict()
    for k, v in sd.items():
        want = v if k.startswith('point_encoder.') else v.to(dtype)   # the projector stays float32
        assert state[k].dtype == want.dtype and torch.equal(state[k], want), k


def test_from_plain_qwen2_checkpoint_initialises_only_projector(tmp_path):
    torch.manual_seed(1)
    llm = Qwen2ForCausalLM(tiny_config(VOCAB, num_hidden_layers=2)); llm.save_pretrained(tmp_path)
    model, info = CADRecode.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.bfloat16)
    assert sorted(info['missing_keys']) == ['point_encoder.projection.bias', 'point_encoder.projection.weight']
    assert not info['unexpected_keys']
    state = model.state_dict()
    assert all(torch.equal(state[k], v.to(torch.bfloat16)) for k, v in llm.state_dict().items())
    w = model.point_encoder.projection.weight
    assert w.dtype == torch.float32 and torch.isfinite(w).all() and 0.015 < w.std() < 0.025
    with torch.no_grad(): out = model(**toy_batch([5, 9]), return_logits=True)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_save_pretrained_roundtrip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    again = CADRecode.from_pretrained(tmp_path)
    batch = toy_batch([7, 3])
    with torch.no_grad(): assert torch.equal(again(**batch).loss, tiny(**batch).loss)


def test_qwen2_1_5b_shapes_on_meta_device():
    with torch.device('meta'): model = CADRecode(qwen2_1_5b_config())
    n = sum(p.numel() for p in model.parameters())                      # tied embedding counted once
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert 1.54e9 <= n <= 1.55e9, n
    assert sum(p.numel() for p in model.point_encoder.parameters()) == 51 * 1536 + 1536


# ---------------------------------------------------------------- end to end: overfit 8 procedural programs
def _overfit_deps():
    "The generator, tokenizer/collator and sandbox written in the other notebooks."
    try:
        from cadrecode_nb.programs import random_programs
        from cadrecode_nb.dataset import train_code_tokenizer, PointCodeCollator
        from cadrecode_nb.points import sample_point_cloud
        from cadrecode_nb.sandbox import run_programs
    except ImportError as e: pytest.skip(f'overfit test needs the data and sandbox modules: {e}')
    return random_programs, train_code_tokenizer, PointCodeCollator, sample_point_cloud, run_programs


def test_tiny_model_overfits_8_programs_and_regenerates_right_solids():
    random_programs, train_code_tokenizer, PointCodeCollator, sample_point_cloud, run_programs = _overfit_deps()
    codes = sorted(random_programs(0, 64), key=len)[:8]              # the 8 shortest: a short CPU run
    gt = run_programs(codes)
    assert all(r.ok for r in gt), [(r.status, r.message) for r in gt]
    points = [sample_point_cloud(r.mesh(), seed=0) for r in gt]
    tok = train_code_tokenizer(random_programs(1, 300) + codes, vocab_size=1024)
    batch = PointCodeCollator(tok)([dict(points=p, code=c) for p, c in zip(points, codes)])
    torch.manual_seed(0)
    model = CADRecode(tiny_config(len(tok), num_hidden_layers=2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    t0, cpu0, losses = time.time(), time.process_time(), []
    for _ in range(120):
        loss = model(**batch).loss
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    train_s, train_cpu = time.time() - t0, time.process_time() - cpu0
    assert losses[-1] < 0.05 and losses[-1] < losses[0] / 100, losses[::20]
    programs = [p[0] for p in generate_programs(model.eval(), tok, batch['points'], max_new_tokens=128)]
    pred = run_programs(programs)
    for code, g, p in zip(codes, gt, pred):
        assert p.ok, (p.status, p.message, code)
        g_mesh, p_mesh = g.mesh(), p.mesh()
        assert abs(p_mesh.volume - g_mesh.volume) <= 1e-3 * abs(g_mesh.volume), (code, programs)
        assert np.allclose(p_mesh.bounds, g_mesh.bounds, atol=1e-3)
    print(f'120 steps: {train_s:.1f} s wall, {train_cpu:.1f} s CPU; final loss {losses[-1]:.4f}; '
          f'{sum(a == b for a, b in zip(programs, codes))}/8 programs verbatim')


def test_importing_the_model_loads_no_data_or_sandbox_code():
    "The model module stands alone: no trimesh, no CadQuery, no dataset or tokenizer-training code, no sandbox."
    import subprocess, sys
    heavy = ('trimesh', 'cadquery', 'cadrecode_nb.sandbox', 'cadrecode_nb.dataset', 'cadrecode_nb.points',
             'cadrecode_nb.programs', 'matplotlib')
    code = f"import sys, cadrecode_nb.model; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]', out


def test_no_deprecated_cache_argument_reaches_transformers():
    "Training and generation pass the KV cache under the name this transformers expects (no FutureWarning)."
    import warnings
    torch.manual_seed(0)
    model = CADRecode(tiny_config(64, num_hidden_layers=1, hidden_size=32, intermediate_size=64)).eval()
    clouds = torch.rand(2, 256, 3) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter('error', FutureWarning)
        generate_token_ids(model, clouds, 1, 2, max_new_tokens=4)
        from cadrecode_nb.model import greedy_decode_static
        greedy_decode_static(model, clouds, 1, 2, max_new_tokens=4)
