"Tests of the shared-prompt decoder (cadrecode_nb.sampling) against transformers' generate, on a tiny model, CPU."
import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from cadrecode_nb.model import CADRecode, tiny_config, generate_token_ids, greedy_decode_static, prompt_embeds, generate_programs
from cadrecode_nb.sampling import (decode_step_bytes, draw_noise, kv_bytes_per_position, logits_warpers, pick_tokens,
                                   prefill_parts, shared_prefix_attention, flex_prefix_attention, shared_prompt_decode,
                                   queries_by_part, prefix_flash_attention, suffix_flash_attention, suffix_triton_attention,
                                   merge_prefix_suffix, fused_projection_weights, refresh_fused_weights, SharedPromptDecoder,
                                   decode_attention, decode_splits, merge_splits, _mlp, _projections)
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

# the flat paths (the default 'triton' and 'fused'; on a CPU their kernels' matmul versions) and the bucketed one
ATTENTIONS = ['triton', 'fused', 'matmul']

START = 1


@pytest.fixture(scope='module')
def wild():
    "A random tiny model with a large init scale (well-separated logits), 4 clouds, and an END id row 1 emits at step 6."
    torch.manual_seed(0)
    model = CADRecode(tiny_config(512, num_hidden_layers=2, initializer_range=0.3)).eval()
    clouds = torch.rand(4, 256, 3) * 2 - 1
    end = int(generate_token_ids(model, clouds, START, 0, max_new_tokens=8)[1, 5])
    return model, clouds, end


@pytest.mark.filterwarnings('ignore')   # flex_attention warns when it runs uncompiled
@pytest.mark.parametrize('attention', [shared_prefix_attention, flex_prefix_attention])
def test_attention_equals_sdpa_over_the_concatenation(attention):
    "Prefix per part + suffix per row, merged by log-sum-exp == one softmax over [prefix; filled suffix], GQA and all."
    torch.manual_seed(1)
    b, k, hq, hkv, d, p, length = 2, 3, 6, 2, 8, 11, 9
    q = torch.randn(b * k, hq, d)
    pk, pv, sk, sv = torch.randn(b, hkv, p, d), torch.randn(b, hkv, p, d), torch.randn(b * k, hkv, length, d), torch.randn(b * k, hkv, length, d)
    for n in (1, 5, length):
        filled = torch.arange(length) < n
        keys = torch.cat([pk.repeat_interleave(k, 0), sk[:, :, :n]], 2).repeat_interleave(hq // hkv, 1)
        values = torch.cat([pv.repeat_interleave(k, 0), sv[:, :, :n]], 2).repeat_interleave(hq // hkv, 1)
        ref = F.scaled_dot_product_attention(q[:, :, None], keys, values, scale=0.3)[:, :, 0]
        torch.testing.assert_close(attention(q, pk, pv, sk, sv, filled, 0.3), ref, rtol=1e-5, atol=1e-5)
    sk[:, :, 5:] = 1e4   # huge keys in unfilled slots never reach the output
    torch.testing.assert_close(attention(q, pk, pv, sk, sv, torch.arange(length) < 5, 0.3),
                               attention(q, pk, pv, sk[:, :, :5], sv[:, :, :5], torch.ones(5, dtype=torch.bool), 0.3))


def test_pick_tokens_draws_what_multinomial_draws():
    "Same generator seed: pick_tokens' draw == torch.multinomial over transformers' warped distribution."
    torch.manual_seed(2)
    logits, done = torch.randn(8, 40) * 2, torch.zeros(8, dtype=torch.bool)
    for t, p in ((1.0, 1.0), (0.6, 1.0), (1.3, 0.8)):
        noise = draw_noise(torch.empty(8, 40), torch.Generator().manual_seed(5))
        tok, _, scores = pick_tokens(logits, done, torch.tensor(True), 39, 39, logits_warpers(t, p), noise)
        ref = TopPLogitsWarper(p)(None, TemperatureLogitsWarper(t)(None, logits.clone())) if p < 1 else logits / t
        torch.testing.assert_close(scores, ref)
        torch.manual_seed(5)
        assert torch.equal(tok, torch.multinomial(F.softmax(ref, -1), 1)[:, 0])


def test_pick_tokens_bans_end_and_pads_finished_rows():
    logits = torch.zeros(2, 4); logits[:, 3] = 9; logits[:, 1] = 1
    tok, done, _ = pick_tokens(logits, torch.tensor([False, True]), torch.tensor(False), 3, 0)
    assert tok.tolist() == [1, 0] and done.tolist() == [False, True]
    noise = torch.ones(2, 4)   # a flat draw: the arg-max of the probabilities
    tok, done, _ = pick_tokens(logits, torch.tensor([False, False]), torch.tensor(True), 3, 0, (), noise)
    assert tok.tolist() == [3, 3] and done.tolist() == [True, True]


def test_prefill_is_generates_first_step(wild):
    model, clouds, _ = wild
    logits, prefix = prefill_parts(model, clouds, START)
    assert len(prefix) == 2 and prefix[0][0].shape == (4, 2, 257, 32)
    assert torch.equal(logits.argmax(-1), generate_token_ids(model, clouds, START, 0, max_new_tokens=1)[:, 0])


@pytest.mark.parametrize('attention', ATTENTIONS)
@pytest.mark.parametrize('bucket,every', [(64, 32), (4, 1), (5, 3)])
def test_greedy_equals_generate(wild, bucket, every, attention):
    "END stopping, END padding, buckets crossed mid-run, host checks at any interval: generate's tokens."
    model, clouds, end = wild
    ref = generate_token_ids(model, clouds, START, end, max_new_tokens=16)
    assert (ref == end).any(1).sum() >= 1   # END is exercised
    got = shared_prompt_decode(model, clouds, START, end, max_new_tokens=16, bucket=bucket, check_every=every, attention=attention)
    assert torch.equal(got, ref)
    assert torch.equal(got, greedy_decode_static(model, clouds, START, end, max_new_tokens=16))


@pytest.mark.parametrize('attention', ATTENTIONS)
def test_greedy_pad_and_min_new_tokens(wild, attention):
    model, clouds, end = wild
    kw = dict(pad_id=7, max_new_tokens=14, min_new_tokens=9)
    got = shared_prompt_decode(model, clouds, START, end, bucket=4, attention=attention, **kw)
    assert torch.equal(got, generate_token_ids(model, clouds, START, end, **kw))


@pytest.mark.parametrize('attention', ATTENTIONS)
def test_sampling_equals_generate_tokens_and_distributions(wild, attention):
    "Same seed: generate's sampled tokens; along them, every step's processed scores equal generate's."
    model, clouds, end = wild
    torch.manual_seed(21)
    ref = model.generate(inputs_embeds=prompt_embeds(model, clouds, START), attention_mask=torch.ones(4, 257, dtype=torch.long),
                         max_new_tokens=12, do_sample=True, num_return_sequences=2, temperature=0.7, top_p=0.85, top_k=0,
                         eos_token_id=end, pad_token_id=end, output_scores=True, return_dict_in_generate=True)
    got, scores = shared_prompt_decode(model, clouds, START, end, num_candidates=2, do_sample=True, temperature=0.7, top_p=0.85,
                                       max_new_tokens=12, seed=21, bucket=4, return_scores=True, attention=attention)
    assert torch.equal(got, ref.sequences)
    assert len(scores) == len(ref.scores)
    for a, b in zip(scores, ref.scores):
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        torch.testing.assert_close(F.softmax(a, -1), F.softmax(b, -1), rtol=0, atol=1e-4)


@pytest.mark.parametrize('attention', ATTENTIONS)
def test_seeded_reproducible_and_shared_equals_independent(wild, attention):
    model, clouds, end = wild
    kw = dict(num_candidates=3, do_sample=True, temperature=1.0, max_new_tokens=12, bucket=4, attention=attention)
    a = shared_prompt_decode(model, clouds, START, end, seed=4, **kw)
    assert a.shape[0] == 12
    assert torch.equal(a, shared_prompt_decode(model, clouds, START, end, seed=4, **kw))
    assert not torch.equal(a, shared_prompt_decode(model, clouds, START, end, seed=5, **kw))
    alone = shared_prompt_decode(model, clouds.repeat_interleave(3, 0), START, end, seed=4, **{**kw, 'num_candidates': 1})
    assert torch.equal(alone, a)
    torch.manual_seed(9); x = shared_prompt_decode(model, clouds, START, end, **kw)
    torch.manual_seed(9); y = shared_prompt_decode(model, clouds, START, end, **kw)
    assert torch.equal(x, y)   # no seed: drawn from torch's RNG, so torch.manual_seed governs it


def test_bad_arguments(wild):
    model, clouds, end = wild
    with pytest.raises(ValueError, match='do_sample'): shared_prompt_decode(model, clouds, START, end, num_candidates=2)
    with pytest.raises(ValueError, match='top_p'): shared_prompt_decode(model, clouds, START, end, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match='temperature'): shared_prompt_decode(model, clouds, START, end, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match='attention'): shared_prompt_decode(model, clouds, START, end, attention='paged')
    with pytest.raises(ValueError, match='graphed=False'):
        shared_prompt_decode(model, clouds, START, end, graphed=True, return_scores=True)


def test_generate_programs_fast_path_equals_generate():
    "generate_programs(fast=True) == generate_programs(fast=False) greedy; sampled: k programs per cloud, seeded."
    from cadrecode_nb.dataset import train_code_tokenizer
    progs = ["import cadquery as cq\nr=cq.Workplane('XY').box(%d,20,30)" % (10 + i) for i in range(30)]
    tok = train_code_tokenizer(progs, vocab_size=300)
    torch.manual_seed(0)
    model = CADRecode(tiny_config(len(tok), num_hidden_layers=2, initializer_range=0.3)).eval()
    clouds = torch.rand(5, 256, 3) * 2 - 1
    ref = generate_programs(model, tok, clouds, max_new_tokens=10, batch_size=2, fast=False)
    assert generate_programs(model, tok, clouds, max_new_tokens=10, batch_size=2, fast=True) == ref
    s = generate_programs(model, tok, clouds, num_candidates=3, do_sample=True, max_new_tokens=6, batch_size=2, fast=True, seed=1)
    assert [len(x) for x in s] == [3] * 5
    assert s == generate_programs(model, tok, clouds, num_candidates=3, do_sample=True, max_new_tokens=6, batch_size=2, fast=True, seed=1)


def test_step_bytes():
    "The floor's arithmetic: the prompt read once per part instead of once per row."
    cfg = tiny_config(100)
    per = kv_bytes_per_position(cfg)
    assert per == 2 * 4 * 2 * 32 * 2
    shared = decode_step_bytes(cfg, 1000, 3, 4, 10, 6.5)
    alone = decode_step_bytes(cfg, 1000, 3, 4, 10, 6.5, shared_prompt=False)
    assert shared['prompt_kv'] == 3 * 10 * per and alone['prompt_kv'] == 12 * 10 * per
    assert shared['suffix_kv'] == alone['suffix_kv'] == int(12 * 6.5 * per)
    assert shared['total'] == 1000 + shared['prompt_kv'] + shared['suffix_kv']


def _flat_case(rows=6, g=3, hkv=2, d=8, length=10, seed=3):
    torch.manual_seed(seed)
    q = torch.randn(rows, hkv * g, d)
    k, v = torch.randn(rows * length, hkv, d), torch.randn(rows * length, hkv, d)
    steps = torch.arange(rows + 1, dtype=torch.int32)
    return q, k, v, steps * g, steps * length


@pytest.mark.parametrize('suffix', [suffix_flash_attention, suffix_triton_attention])
def test_suffix_reads_each_row_to_its_used_length(suffix):
    "Row r's G queries of each KV head over its first used[r] slots == SDPA over exactly those keys; the rest never count."
    rows, g, hkv, d, length = 6, 3, 2, 8, 10
    q, k, v, cu_q, cu_k = _flat_case(rows, g, hkv, d, length)
    used = torch.tensor([1, 4, 10, 7, 2, 5], dtype=torch.int32)
    out, lse = suffix(queries_by_part(q, 1, hkv).reshape(-1, hkv, d), k, v, used, cu_q, cu_k, 0.4)
    assert out.shape == (rows * g, hkv, d) and lse.shape == (rows * g, hkv)
    for r in range(rows):
        n = int(used[r])
        keys = k.view(rows, length, hkv, d)[r, :n].transpose(0, 1).repeat_interleave(g, 0)     # (Hq, n, D)
        values = v.view(rows, length, hkv, d)[r, :n].transpose(0, 1).repeat_interleave(g, 0)
        ref = F.scaled_dot_product_attention(q[r][:, None], keys, values, scale=0.4)[:, 0]      # (Hq, D)
        mine = out.view(rows, g, hkv, d)[r].transpose(0, 1).reshape(hkv * g, d)               # head j*G+i
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
        scores = (q[r].view(hkv, g, d) @ keys.view(hkv, g, n, d)[:, 0].transpose(-1, -2)) * 0.4   # (Hkv, G, n)
        torch.testing.assert_close(lse.view(rows, g, hkv)[r], torch.logsumexp(scores, -1).T, rtol=1e-5, atol=1e-5)
    k2 = k.clone(); k2.view(rows, length, hkv, d)[0, 1:] = 1e4   # huge keys beyond row 0's one filled slot
    torch.testing.assert_close(suffix(queries_by_part(q, 1, hkv).reshape(-1, hkv, d), k2, v, used, cu_q, cu_k, 0.4)[0], out)


def test_prefix_and_merge_equal_one_softmax_over_prompt_and_suffix():
    "Prefix per part (candidates as query positions) merged with the suffix == SDPA over [prompt; filled suffix] per row."
    b, k, g, hkv, d, p, length = 2, 3, 3, 2, 8, 7, 5
    rows = b * k
    q, sk, sv, cu_q, cu_k = _flat_case(rows, g, hkv, d, length, seed=4)
    pk, pv = torch.randn(b, p, hkv, d), torch.randn(b, p, hkv, d)
    used = torch.full((rows,), 4, dtype=torch.int32)
    o1, lse1 = prefix_flash_attention(queries_by_part(q, k, hkv), pk, pv, 0.3)
    assert o1.shape == (b, k * g, hkv, d) and lse1.shape == (b, hkv, k * g)
    o2, lse2 = suffix_flash_attention(queries_by_part(q, 1, hkv).reshape(-1, hkv, d), sk, sv, used, cu_q, cu_k, 0.3)
    merged = merge_prefix_suffix(o1, lse1, o2, lse2, rows)
    for r in range(rows):
        keys = torch.cat([pk[r // k], sk.view(rows, length, hkv, d)[r, :4]]).transpose(0, 1).repeat_interleave(g, 0)
        values = torch.cat([pv[r // k], sv.view(rows, length, hkv, d)[r, :4]]).transpose(0, 1).repeat_interleave(g, 0)
        ref = F.scaled_dot_product_attention(q[r][:, None], keys, values, scale=0.3)[:, 0]
        torch.testing.assert_close(merged[r], ref, rtol=1e-5, atol=1e-5)


def test_fused_weights_follow_the_model_and_skip_wrapped_layers(wild):
    "The concatenated q/k/v and gate/up copies equal the modules' outputs, are refreshed in place, and are None for non-Linear layers."
    model, _, _ = wild
    layer = model.model.layers[0]
    fused = fused_projection_weights(layer)
    h = torch.randn(3, model.config.hidden_size)
    attn, mlp = layer.self_attn, layer.mlp
    torch.testing.assert_close(F.linear(h, fused[0], fused[1]), torch.cat([attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)], -1))
    with torch.no_grad():
        mlp.up_proj.weight.add_(1.0)
        stale = fused[2].clone(); refresh_fused_weights(layer, fused)
        assert not torch.equal(stale, fused[2])
        torch.testing.assert_close(F.linear(h, fused[2]), torch.cat([mlp.gate_proj(h), mlp.up_proj(h)], -1))
        mlp.up_proj.weight.sub_(1.0)
    wrapped = copy.deepcopy(layer)
    wrapped.self_attn.q_proj = torch.nn.Sequential(wrapped.self_attn.q_proj)   # as a LoRA wrapper replaces the module
    assert fused_projection_weights(wrapped) is None


def test_transposed_gate_up_equals_the_modules_and_follows_a_refresh(wild):
    "With the gate/up copy input-major (few rows on a GPU) the MLP and projections still equal the modules', and a refresh follows the model."
    model, _, _ = wild
    layer = model.model.layers[1]
    fused = fused_projection_weights(layer, transposed=True)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    assert fused.gate_up.shape == (hidden, 2 * inter) and fused.gate_up.is_contiguous() and fused.transposed
    h = torch.randn(5, 1, hidden)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)   # another summation order
    close(_mlp(layer, h, fused), layer.mlp(h))
    for ours, theirs in zip(_projections(layer, h, fused), (layer.self_attn.q_proj(h), layer.self_attn.k_proj(h), layer.self_attn.v_proj(h))):
        close(ours, theirs)
    with torch.no_grad():
        layer.mlp.gate_proj.weight.mul_(2.0)
        refresh_fused_weights(layer, fused)
        close(_mlp(layer, h, fused), layer.mlp(h))
        layer.mlp.gate_proj.weight.div_(2.0)


def test_flat_decoder_layout(wild):
    "The flat layouts: the prompt as (B, P, Hkv, D), the suffix flattened to rows x length, one bucket, cu_seqlens."
    model, _, _ = wild
    dec = SharedPromptDecoder(model, parts=2, candidates=3, prompt_len=5, max_new_tokens=20, end_id=2, pad_id=0,
                              bucket=8, attention='triton')
    hkv, g = model.config.num_key_value_heads, model.config.num_attention_heads // model.config.num_key_value_heads
    assert dec.prefix[0][0].shape[:3] == (2, 5, hkv) and dec.suffix[0][0].shape[:2] == (6 * 24, hkv)
    assert dec.bucket == 24 and dec.cu_q.tolist() == [i * g for i in range(7)] and dec.cu_k.tolist() == [i * 24 for i in range(7)]


def test_decode_attention_rotates_writes_and_reads_each_row_to_its_used_length():
    "RoPE at each row's newest slot, that slot's key and value written (nothing else), SDPA over [its part's prompt; used slots]."
    torch.manual_seed(5)
    b, k, hq, hkv, d, p, length = 2, 3, 6, 2, 8, 7, 9
    rows, g = b * k, hq // hkv
    qkv = torch.randn(rows, (hq + 2 * hkv) * d)
    pk, pv = torch.randn(b, p, hkv, d), torch.randn(b, p, hkv, d)
    sk, sv = torch.randn(rows * length, hkv, d), torch.randn(rows * length, hkv, d)
    angles = torch.rand(length, d // 2) * 6
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    used = torch.tensor([1, 4, 9, 7, 2, 5], dtype=torch.int32)
    k2, v2 = sk.clone(), sv.clone()
    out, lse = decode_attention(qkv, pk, pv, k2, v2, cos, sin, used, k, hq, 0.3)
    merged = merge_splits(out, lse, torch.float32).view(rows, hq, d)
    q_new, k_new, v_new = qkv.view(rows, hq + 2 * hkv, d).split([hq, hkv, hkv], 1)
    for r in range(rows):
        n = int(used[r]) - 1                                               # the newest slot
        q_r, k_r = apply_rotary_pos_emb(q_new[r][None, :, None], k_new[r][None, :, None], cos[None, n:n + 1], sin[None, n:n + 1])
        cached = k2.view(rows, length, hkv, d)[r]
        torch.testing.assert_close(cached[n], k_r[0, :, 0])
        torch.testing.assert_close(v2.view(rows, length, hkv, d)[r, n], v_new[r])
        others = torch.arange(length) != n
        assert torch.equal(cached[others], sk.view(rows, length, hkv, d)[r][others])
        keys = torch.cat([pk[r // k], cached[:n + 1]]).transpose(0, 1).repeat_interleave(g, 0)          # (Hq, P+n+1, D)
        values = torch.cat([pv[r // k], v2.view(rows, length, hkv, d)[r, :n + 1]]).transpose(0, 1).repeat_interleave(g, 0)
        ref = F.scaled_dot_product_attention(q_r[0], keys, values, scale=0.3)[:, 0]
        torch.testing.assert_close(merged[r], ref, rtol=1e-5, atol=1e-5)
    assert decode_splits(4, 2, torch.device('cpu')) == 1


def test_merge_splits_equals_one_softmax_and_ignores_empty_ranges():
    "Partial softmaxes over disjoint key ranges, merged, == the softmax over all keys; an empty range (-inf) adds nothing."
    torch.manual_seed(6)
    scores, values = torch.randn(3, 5, 10), torch.randn(3, 10, 4)          # (R, Hq, N), (R, N, D)
    ranges = [(0, 3), (3, 3), (3, 10)]                                     # the middle one empty
    outs, lses = [], []
    for lo, hi in ranges:
        s = scores[:, :, lo:hi]
        lses.append(torch.logsumexp(s, -1) if hi > lo else torch.full((3, 5), float('-inf')))
        outs.append(torch.softmax(s, -1) @ values[:, lo:hi] if hi > lo else torch.zeros(3, 5, 4))
    merged = merge_splits(torch.stack(outs, 1), torch.stack(lses, 1), torch.float32)
    torch.testing.assert_close(merged, (torch.softmax(scores, -1) @ values).flatten(1))
    one = merge_splits(torch.stack(outs[2:], 1), torch.stack(lses[2:], 1), torch.bfloat16)   # one range: no merge
    torch.testing.assert_close(one, outs[2].flatten(1).to(torch.bfloat16))

def test_auto_attention_is_fused_for_one_candidate_else_triton(wild):
    "The default picks the measured-fastest kernel: 'fused' at one row per part, 'triton' when candidates share a prompt."
    model, clouds, end = wild
    for k, expected in ((1, 'fused'), (3, 'triton')):
        auto = shared_prompt_decode(model, clouds, START, end, num_candidates=k, do_sample=k > 1, max_new_tokens=6, seed=0)
        assert model._cadrecode_shared_decoder[1].attention == expected
        explicit = shared_prompt_decode(model, clouds, START, end, num_candidates=k, do_sample=k > 1, max_new_tokens=6,
                                        seed=0, attention=expected)
        assert torch.equal(auto, explicit)
