"""Trainer: exact resume, checkpoints that survive SIGKILL, corrupt-checkpoint fallback, DDP over gloo, guards, CLI,
training longer, early stopping, the exported model, step times without pauses.

Everything runs on CPU with a one-layer Qwen2 (hidden 32) on in-memory data: random point clouds paired with
programs from the kit's generator (the trainer does not care whether they match), so no sandbox is needed.
"""
import json, math, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np, pytest, torch

from cadrecode_nb.core import ConfigError, config_dir
from cadrecode_nb.trainer import *
from cadrecode_nb.run_parts import *
from cadrecode_nb.speed import *
from cadrecode_nb.checkpoints import *
from cadrecode_nb.dataset import train_code_tokenizer
from cadrecode_nb.points import add_point_noise

MICRO_MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)


def make_data(n=40, seed=0):
    "n items: (256,3) random clouds in [-1,1] with generated programs."
    from cadrecode_nb.programs import random_programs
    g = torch.Generator().manual_seed(seed)
    return [dict(points=torch.rand(256, 3, generator=g) * 2 - 1, code=c, index=i)
            for i, c in enumerate(random_programs(seed, n))]


@pytest.fixture(scope='module')
def data():
    return make_data()


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory, data):
    d = tmp_path_factory.mktemp('tok')
    train_code_tokenizer([x['code'] for x in data], vocab_size=400, path=d)
    return d


def micro_cfg(tok_dir, out_dir, **kw):
    base = dict(model='tiny', model_kw=MICRO_MODEL, tokenizer=str(tok_dir), steps=8, batch_size=4, micro_batch_size=2,
                lr=1e-2, warmup_steps=2, min_lr_ratio=0.1, val_every=3, val_batches=2, save_every=3, keep_last=2,
                out_dir=str(out_dir), progress=False, log_every=1, record_indices=True, export='none', device='cpu',
                peak_flops=1e12)
    return TrainConfig(**{**base, **kw})


def run(cfg, data, **kw):
    return train(cfg, train_ds=data[:32], val_ds=data[32:], report=lambda *a, **k: None, **kw)


def train_rows(res, key):
    return [r[key] for r in res.records if r['kind'] == 'train']


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, f"weights differ: {bad[:5]}"


# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('extra', [dict(ema_decay=0.9, noise_p=0.5),                       # accumulation x2, EMA, noise
                                   dict(projector_lr=3e-2, micro_batch_size=4, grad_clip=0.5)])  # 2 lrs, no accumulation
def test_resume_is_exact(tmp_path, data, tok_dir, extra):
    "2k steps in one go == k steps, stop, resume for k: losses, lrs, sample order, final weights (torch.equal)."
    full = run(micro_cfg(tok_dir, tmp_path / 'full', **extra), data)
    part = run(micro_cfg(tok_dir, tmp_path / 'split', stop_at=4, **extra), data)
    assert part.step == 4 and part.checkpoint.name == 'step_00000004.pt'
    resumed = run(micro_cfg(tok_dir, tmp_path / 'split', **extra), data)
    assert resumed.step == full.step == 8
    for key in ('loss', 'lr', 'lrs', 'indices', 'grad_norm', 'tokens'):
        assert train_rows(full, key) == train_rows(resumed, key), key
    assert [r for r in full.records if r['kind'] == 'val'] == [r for r in resumed.records if r['kind'] == 'val']
    assert_same_weights(full.model, resumed.model)
    # the lr of every step is the schedule's formula, and the order is a fresh permutation per epoch
    np.testing.assert_allclose(train_rows(full, 'lr'), lr_curve(micro_cfg(tok_dir, tmp_path, **extra)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(train_rows(full, 'lr'), [closed_form_lr(s, 1e-2, 2, 8, 0.1) for s in range(8)], rtol=1e-12)
    order = sum(train_rows(full, 'indices'), [])
    assert sorted(order) == sorted(list(range(32)))                # 8 steps x 4 = one epoch of 32 samples
    # the history file was truncated at the checkpoint and continued, not duplicated
    assert read_history(tmp_path / 'split' / 'history.jsonl') == resumed.records
    assert [r['step'] for r in resumed.records if r['kind'] == 'train'] == list(range(1, 9))


@pytest.mark.parametrize('dtype', ['bf16', 'fp16'])
def test_mixed_precision_trains_and_resumes(tmp_path, data, tok_dir, dtype):
    "Autocast bf16 / fp16 (+ GradScaler, whose state is checkpointed) on CPU: finite losses, exact resume."
    full = run(micro_cfg(tok_dir, tmp_path / 'full', dtype=dtype, steps=4), data)
    run(micro_cfg(tok_dir, tmp_path / 'split', dtype=dtype, steps=4, stop_at=2), data)
    state = load_checkpoint(tmp_path / 'split' / 'checkpoints' / 'last.pt')
    assert ('scale' in state['scaler']) == (dtype == 'fp16')
    resumed = run(micro_cfg(tok_dir, tmp_path / 'split', dtype=dtype, steps=4), data)
    assert all(np.isfinite(train_rows(full, 'loss'))) and full.nan_skipped == 0
    assert train_rows(full, 'loss') == train_rows(resumed, 'loss')
    assert_same_weights(full.model, resumed.model)


def test_corrupt_checkpoint_falls_back(tmp_path, data, tok_dir):
    "A corrupt newest checkpoint is reported; training resumes from the previous one and ends where it would have."
    cfg = micro_cfg(tok_dir, tmp_path / 'run', steps=6)
    first = run(cfg, data)
    ck = tmp_path / 'run' / 'checkpoints'
    assert sorted(p.name for p in ck.iterdir()) == ['best.pt', 'last.pt', 'step_00000003.pt', 'step_00000006.pt']
    with open(ck / 'step_00000006.pt', 'r+b') as f: f.truncate(1000)     # last.pt is the same file (hard link)
    msgs = []
    again = train(cfg, train_ds=data[:32], val_ds=data[32:], report=msgs.append)
    assert any('step_00000006.pt' in m or 'last.pt' in m for m in msgs if m.startswith('warning')), msgs
    assert any('step_00000003.pt' in m for m in msgs if m.startswith('resumed')), msgs
    assert again.step == 6
    assert_same_weights(first.model, again.model)


def test_mismatched_config_is_refused(tmp_path, data, tok_dir):
    run(micro_cfg(tok_dir, tmp_path / 'run', stop_at=3), data)
    with pytest.raises(CheckpointError, match=r"batch_size: checkpoint 4 vs now 8.*lr: checkpoint 0.01 vs now 0.02"):
        run(micro_cfg(tok_dir, tmp_path / 'run', batch_size=8, lr=2e-2), data)
    res = run(micro_cfg(tok_dir, tmp_path / 'run', micro_batch_size=4, log_every=2), data)   # allowed to change
    assert res.step == 8
    with pytest.raises(CheckpointError, match="resume' = 'never'"):
        run(micro_cfg(tok_dir, tmp_path / 'run', resume='never'), data)


# ---------------------------------------------------------------------------------------------------------------------
def _write_forever(ck, counter):
    "Child process: write 24 MB checkpoints in a loop, counting finished ones (tensor built by NumPy: no OpenMP after fork)."
    i = 0
    while True:
        i += 1
        w = torch.from_numpy(np.full(6_000_000, float(i), dtype=np.float32))
        save_checkpoint({'format': CKPT_FORMAT, 'step': i, 'w': w}, ck, keep_last=2)
        counter.value = i


def test_sigkill_while_writing_leaves_a_loadable_checkpoint(tmp_path):
    "SIGKILL a process that writes checkpoints in a loop at random moments; the last good one always loads."
    import multiprocessing as mp
    ctx, rng = mp.get_context('fork'), random.Random(0)      # fork: the child starts at once, trainer already imported
    ck, killed_mid_write = tmp_path / 'ck', 0
    for trial in range(5):
        counter = ctx.Value('i', 0)
        p = ctx.Process(target=_write_forever, args=(ck, counter), daemon=True); p.start()
        t0 = time.time()
        while counter.value < 1 and time.time() - t0 < 60: time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(p.pid, signal.SIGKILL); p.join()
        assert p.exitcode == -signal.SIGKILL
        killed_mid_write += bool(list(ck.glob('.*.partial')))  # a temp file left behind = killed while writing
        state, path = latest_checkpoint(ck, report=lambda m: pytest.fail(f"unexpected corrupt checkpoint: {m}"))
        assert state['step'] >= 1
        assert torch.equal(state['w'], torch.full((6_000_000,), float(state['step']))), path
    assert killed_mid_write >= 1, "no kill landed during a write; the test proved nothing"
    save_checkpoint({'format': CKPT_FORMAT, 'step': 10_000}, ck)   # leftovers of killed writes are cleaned up
    assert not list(ck.glob('.*.partial'))


# ---------------------------------------------------------------------------------------------------------------------
DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from test_trainer import make_data
    from cadrecode_nb.trainer import TrainConfig, train, cleanup_distributed
    data = make_data()
    cfg = TrainConfig(**json.loads(open(sys.argv[2]).read()))
    res = train(cfg, train_ds=data[:32], val_ds=data[32:], report=lambda *a, **k: None)
    cleanup_distributed()
""")


def test_ddp_two_processes_gloo_then_resume_in_one(tmp_path, data, tok_dir):
    """2 CPU processes (torchrun, gloo) with packed rows = 1 process with padded rows, up to float rounding; the rank-0
    checkpoint resumes in one process (padded again: packing is a speed switch, not part of the run's identity)."""
    ref = run(micro_cfg(tok_dir, tmp_path / 'ref', steps=6, noise_p=0.0), data)            # 1 process, accumulation 2
    cfg = micro_cfg(tok_dir, tmp_path / 'ddp', steps=6, noise_p=0.0, stop_at=3, pack=True)  # 2 ranks x 2 samples, packed
    (tmp_path / 'cfg.json').write_text(json.dumps(cfg.to_dict()))
    (tmp_path / 'ddp.py').write_text(DDP_SCRIPT)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(tmp_path / 'ddp.py'), str(Path(__file__).parent), str(tmp_path / 'cfg.json')]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    state = load_checkpoint(tmp_path / 'ddp' / 'checkpoints' / 'last.pt')
    assert (state['step'], state['world_size'], state['data']['position']) == (3, 2, 12)
    hist = read_history(tmp_path / 'ddp' / 'history.jsonl')                               # rank 0 wrote it, once
    assert [r['step'] for r in hist if r['kind'] == 'train'] == [1, 2, 3]
    ref_loss = train_rows(ref, 'loss')
    np.testing.assert_allclose([r['loss'] for r in hist if r['kind'] == 'train'], ref_loss[:3], rtol=1e-4)
    assert [r['indices'] for r in hist if r['kind'] == 'train'] == train_rows(ref, 'indices')[:3]
    resumed = run(micro_cfg(tok_dir, tmp_path / 'ddp', steps=6, noise_p=0.0), data)       # one process continues
    assert resumed.step == 6
    np.testing.assert_allclose(train_rows(resumed, 'loss'), ref_loss, rtol=1e-4)
    assert train_rows(resumed, 'lr') == train_rows(ref, 'lr')
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=k)


STOP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from test_trainer import make_data
    from cadrecode_nb.trainer import TrainConfig, train, cleanup_distributed
    data, rank, folder = make_data(), os.environ['RANK'], sys.argv[3]
    cfg = TrainConfig(**json.loads(open(sys.argv[2]).read()))
    open(f'{folder}/pid{rank}', 'w').write(str(os.getpid()))
    res = train(cfg, train_ds=data[:32], val_ds=data[32:], report=lambda *a, **k: None)
    open(f'{folder}/done{rank}', 'w').write(json.dumps(dict(step=res.step, stopped=res.stopped)))
    cleanup_distributed()
""")


def test_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, tok_dir):
    "SIGTERM to rank 1 alone (2 CPU processes, gloo): both ranks stop after the same step, and rank 0 checkpoints it."
    cfg = micro_cfg(tok_dir, tmp_path / 'run', steps=2000, val_every=0, save_every=0, log_every=1)
    (tmp_path / 'cfg.json').write_text(json.dumps(cfg.to_dict()))
    (tmp_path / 'stop.py').write_text(STOP_SCRIPT)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(tmp_path / 'stop.py'), str(Path(__file__).parent), str(tmp_path / 'cfg.json'), str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    history, t0 = tmp_path / 'run' / 'history.jsonl', time.time()
    while not (history.exists() and len(history.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()
        time.sleep(0.05)
    os.kill(int((tmp_path / 'pid1').read_text()), signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    done = [json.loads((tmp_path / f'done{r}').read_text()) for r in (0, 1)]
    assert done[0]['step'] == done[1]['step'] < 2000, done
    assert (done[0]['stopped'], done[1]['stopped']) == ('stop request', 'SIGTERM')
    assert load_checkpoint(tmp_path / 'run' / 'checkpoints' / 'last.pt')['step'] == done[0]['step']


# ---------------------------------------------------------------------------------------------------------------------
class _Faulty(torch.nn.Module):
    "Wraps a model; the forward returns a NaN loss on chosen calls, or raises an out-of-memory error."
    def __init__(self, inner, nan_calls=(), oom=False):
        super().__init__()
        self.inner, self.nan_calls, self.oom, self.calls = inner, set(nan_calls), oom, 0
    def forward(self, **kw):
        self.calls += 1
        if self.oom: raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
        out = self.inner(**kw)
        if self.calls in self.nan_calls: out.loss = out.loss * float('nan')
        return out


def _inner(tok_dir):
    from cadrecode_nb.model import CADRecode, tiny_config
    from cadrecode_nb.dataset import load_tokenizer
    torch.manual_seed(0)
    return CADRecode(tiny_config(len(load_tokenizer(tok_dir)), **MICRO_MODEL))


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, data, tok_dir):
    cfg = micro_cfg(tok_dir, tmp_path / 'a', micro_batch_size=4, steps=6, save_every=0, val_every=0)
    m = _Faulty(_inner(tok_dir), nan_calls={2, 4})
    res = run(cfg, data, model=m)
    assert res.nan_skipped == 2 and res.step == 6
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert [r['nan_skipped'] for r in res.records if r['kind'] == 'train'] == [0, 1, 1, 2, 2, 2]
    cfg = micro_cfg(tok_dir, tmp_path / 'b', micro_batch_size=4, steps=6, max_nan_streak=2, save_every=0, val_every=0)
    with pytest.raises(TrainingError, match='2 non-finite'):
        run(cfg, data, model=_Faulty(_inner(tok_dir), nan_calls={3, 4}))


def test_out_of_memory_names_what_to_lower(tmp_path, data, tok_dir):
    cfg = micro_cfg(tok_dir, tmp_path / 'a')
    with pytest.raises(RuntimeError, match=r"out of memory at step 1 with micro_batch_size=2.*Lower micro_batch_size"):
        run(cfg, data, model=_Faulty(_inner(tok_dir), oom=True))


# ---------------------------------------------------------------------------------------------------------------------
def test_shipped_configs_and_cli(tmp_path, capsys):
    for name in ('paper', 'tiny', 'small', 'cpu'):
        cfg = TrainConfig.load(name)
        assert TrainConfig.from_yaml(config_dir() / f'train_{name}.yaml') == cfg
    paper = TrainConfig.load('paper')
    assert (paper.model, paper.lr, paper.weight_decay, paper.warmup_steps, paper.steps, paper.batch_size,
            paper.noise_p, paper.noise_std, paper.dtype) == ('Qwen/Qwen2-1.5B', 2e-4, 0.01, 1000, 100_000, 18, 0.5, 0.01, 'bf16')
    main(['--config', 'paper', '--print-config', '--lr', '1e-4', '--set', 'model_kw.num_hidden_layers=2', '--no-tf32'])
    printed = capsys.readouterr().out
    import yaml
    d = yaml.safe_load(printed)
    assert (d['lr'], d['model_kw'], d['tf32'], d['steps']) == (1e-4, {'num_hidden_layers': 2}, False, 100_000)
    (tmp_path / 'bad.yaml').write_text('lr: 2e-4\nwarmup: 10\n')
    with pytest.raises(SystemExit) as e: main(['--config', str(tmp_path / 'bad.yaml')])
    assert e.value.code == 2
    assert "bad.yaml: unknown key 'warmup' (did you mean 'warmup_steps'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit): main(['--config', 'tiny', '--data_dir', str(tmp_path / 'none'), '--build_data', ''])
    assert 'no dataset there' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Independent references: the schedule written out, clipping by hand, the global generators, token weighting.

def closed_form_lr(s, lr, warmup, steps, floor):
    "The schedule written out (not transformers'): lr*s/warmup, then a half cosine from lr down to floor*lr at `steps`."
    if s < warmup: return lr * s / warmup
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))


class _TwoPart(torch.nn.Module):
    "An LLM part and a `point_encoder` part, as CADRecode names them (matrices, biases, a norm)."
    def __init__(self):
        super().__init__()
        self.llm, self.norm = torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)
        self.point_encoder = torch.nn.Linear(3, 4)


def test_schedule_is_the_closed_form(tmp_path, tok_dir):
    "The lr each group gets at each step, through a real optimizer: warm-up, cosine and the floor, per group's own lr."
    cfg = micro_cfg(tok_dir, tmp_path, steps=20, warmup_steps=4, lr=1e-2, projector_lr=3e-2, min_lr_ratio=0.25)
    opt = make_optimizer(_TwoPart(), cfg, torch.device('cpu'))
    groups = {g['name']: g for g in opt.param_groups}
    assert sorted(groups) == ['llm/decay', 'llm/no_decay', 'projector/decay', 'projector/no_decay']
    assert [p.ndim for p in groups['llm/no_decay']['params']] == [1, 1, 1]          # a bias and the norm's two vectors
    assert (groups['llm/decay']['weight_decay'], groups['llm/no_decay']['weight_decay']) == (0.01, 0.0)
    sched = make_scheduler(opt, cfg)
    by_hand = {0: 0.0, 2: 0.5, 4: 1.0, 12: 0.25 + 0.75 * 0.5, 20: 0.25}            # factors read off the formula
    for s in range(21):
        for name, g in groups.items():
            base = 3e-2 if name.startswith('projector') else 1e-2
            assert g['lr'] == pytest.approx(closed_form_lr(s, base, 4, 20, 0.25), rel=1e-12, abs=1e-18), (s, name)
            if s in by_hand: assert g['lr'] == pytest.approx(base * by_hand[s], rel=1e-12, abs=1e-18), (s, name)
        opt.step(); sched.step()


def test_logged_lr_is_the_closed_form(tmp_path, data, tok_dir):
    "The lr `train` records for step s (1-based) is the one its update used: the closed form at s-1, floor included."
    res = run(micro_cfg(tok_dir, tmp_path / 'r', steps=6, warmup_steps=2, min_lr_ratio=0.5, projector_lr=3e-2,
                        val_every=0, save_every=0), data)
    lrs = train_rows(res, 'lrs')
    for s, row in enumerate(lrs):
        assert sorted(set(row)) == pytest.approx(sorted({closed_form_lr(s, 1e-2, 2, 6, 0.5), closed_form_lr(s, 3e-2, 2, 6, 0.5)}),
                                                 rel=1e-12, abs=1e-18), s
    assert train_rows(res, 'lr')[2] == pytest.approx(1e-2)                          # end of the warm-up: the peak


def test_clip_coef_is_the_hand_formula():
    for norm, max_norm in [(10.0, 1.0), (2.0, 0.5), (0.5, 1.0), (3.0, 0.0)]:
        expect = 1.0 if not max_norm else min(1.0, max_norm / (norm + 1e-6))
        assert clip_coef(torch.tensor(norm), max_norm).item() == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize('fused', [True, False])
def test_apply_update_clips_to_max_norm(fused):
    "One AdamW step on a gradient of norm 5 clipped to 1: the first moment is (1-beta1) x the clipped gradient (by hand)."
    w = torch.nn.Parameter(torch.zeros(4)); opt = torch.optim.AdamW([w], lr=0.1, fused=fused)
    g = torch.tensor([3.0, 4.0, 0.0, 0.0])                                          # norm 5
    w.grad = g.clone()
    apply_update(opt, make_grad_scaler(torch.device('cpu'), 'fp32'), torch.tensor(False), g.norm(), 1.0)
    torch.testing.assert_close(opt.state[w]['exp_avg'], 0.1 * g / (5 + 1e-6), rtol=1e-6, atol=0)
    v = torch.nn.Parameter(torch.zeros(4)); sgd = torch.optim.SGD([v], lr=1.0)      # host path: w - lr * clipped g
    v.grad = g.clone()
    apply_update(sgd, make_grad_scaler(torch.device('cpu'), 'fp32'), torch.tensor(False), g.norm(), 1.0)
    torch.testing.assert_close(v.detach(), -g / (5 + 1e-6), rtol=1e-6, atol=0)


def test_training_clips_the_gradient(tmp_path, data, tok_dir):
    "After step 1 of `train`, AdamW's first moment is (1-beta1) x the clipped gradient: norm (1-beta1) x max_norm."
    res = run(micro_cfg(tok_dir, tmp_path / 'c', grad_clip=0.05, stop_at=1, noise_p=0.0), data)
    g = train_rows(res, 'grad_norm')[0]
    assert g > 10 * 0.05                                                            # the clip is active
    state = load_checkpoint(res.checkpoint)['optimizer']['state']
    m = torch.cat([s['exp_avg'].flatten() for s in state.values()]).norm().item()
    assert m == pytest.approx(0.1 * 0.05 * g / (g + 1e-6), rel=1e-4)


@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_global_generators_on_resume(tmp_path, data, tok_dir, monkeypatch, dropout):
    """With dropout the global torch generator drives the masks: resume is exact only because its state comes back (and
    nothing draws from it between the restore and the first step, not even the matmul that measures the MFU peak).
    Without dropout the loop draws nothing from the global generators: scrambled at resume, the run is still exact."""
    kw = dict(model_kw=dict(MICRO_MODEL, attention_dropout=dropout), noise_p=0.5, steps=6, peak_flops=None)  # peak measured
    full = run(micro_cfg(tok_dir, tmp_path / 'full', **kw), data)
    run(micro_cfg(tok_dir, tmp_path / 'split', stop_at=3, **kw), data)
    resumed = run(micro_cfg(tok_dir, tmp_path / 'split', **kw), data)
    assert train_rows(full, 'loss') == train_rows(resumed, 'loss')
    assert_same_weights(full.model, resumed.model)
    import cadrecode_nb.trainer as trainer   # now resume with every global generator scrambled instead of restored
    monkeypatch.setattr(trainer, 'set_rng_state', lambda state: (random.seed(99), np.random.seed(99), torch.manual_seed(99)))
    run(micro_cfg(tok_dir, tmp_path / 'scrambled', stop_at=3, **kw), data)
    scrambled = run(micro_cfg(tok_dir, tmp_path / 'scrambled', **kw), data)
    same = train_rows(full, 'loss') == train_rows(scrambled, 'loss')
    assert same == (dropout == 0), train_rows(scrambled, 'loss')


def test_accumulation_weights_every_label_token_alike(tmp_path, data, tok_dir):
    "A global batch of 4 as one micro-batch or as two: the same loss and weights up to float rounding (token-weighted)."
    one = run(micro_cfg(tok_dir, tmp_path / 'one', micro_batch_size=4, steps=4, noise_p=0.0, val_every=0, save_every=0), data)
    two = run(micro_cfg(tok_dir, tmp_path / 'two', micro_batch_size=2, steps=4, noise_p=0.0, val_every=0, save_every=0), data)
    np.testing.assert_allclose(train_rows(one, 'loss'), train_rows(two, 'loss'), rtol=1e-5)
    for (k, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)


def test_validation_loss_is_token_weighted(tmp_path, data, tok_dir):
    "Micro-batches of 2, 2 and 1 samples: the mean over every label token, computed here sample by sample."
    from cadrecode_nb.dataset import PointCodeCollator, load_tokenizer
    collate, model, val = PointCodeCollator(load_tokenizer(tok_dir)), _inner(tok_dir), data[32:37]
    cfg = micro_cfg(tok_dir, tmp_path, micro_batch_size=2, val_batches=0)
    total = count = 0.0
    with torch.no_grad():
        for x in val:
            b = collate([x]); n = int((b['labels'][:, 1:] != -100).sum())
            total += model(**b).loss.double().item() * n; count += n
    assert validation_loss(model, val, collate, cfg, torch.device('cpu')) == pytest.approx(total / count, rel=1e-6)


def test_validation_uses_the_ema_weights(tmp_path, data, tok_dir):
    "With EMA on, the recorded validation loss is that of the averaged weights (saved in the checkpoint), not the raw ones."
    from cadrecode_nb.dataset import PointCodeCollator, load_tokenizer
    cfg = micro_cfg(tok_dir, tmp_path / 'e', ema_decay=0.5, steps=3, val_every=3, save_every=3, noise_p=0.0)
    res = run(cfg, data)
    recorded = [r['val_loss'] for r in res.records if r['kind'] == 'val'][-1]
    ema = load_checkpoint(res.checkpoint)['ema']
    averaged = _inner(tok_dir)
    averaged.load_state_dict({k[len('module.'):]: v for k, v in ema.items() if k.startswith('module.')})
    collate, dev = PointCodeCollator(load_tokenizer(tok_dir), pad_to_multiple_of=cfg.pad_to_multiple_of), torch.device('cpu')
    assert validation_loss(averaged, data[32:], collate, cfg, dev) == pytest.approx(recorded, rel=1e-6)
    assert validation_loss(res.model, data[32:], collate, cfg, dev) != pytest.approx(recorded, rel=1e-4)


def test_streams_of_samples_and_noise():
    "Each epoch is a fresh permutation (by hand: seeded by (seed, epoch)); noise differs by step, rank and micro-batch."
    smp = ResumableSampler(10, seed=3)
    stream = smp.take(0, 30)
    for e in range(3):
        assert stream[10 * e:10 * (e + 1)].tolist() == np.random.default_rng([3, e]).permutation(10).tolist()
    assert stream[:10].tolist() != stream[10:20].tolist()
    assert smp.take(7, 6).tolist() == stream[7:13].tolist()                           # across an epoch boundary
    p = torch.zeros(8, 16, 3)
    draws = [add_point_noise(p, 1.0, 0.01, noise_generator(0, *where)) for where in [(5, 0, 0), (6, 0, 0), (5, 1, 0), (5, 0, 1)]]
    assert all(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(draws[0], add_point_noise(p, 1.0, 0.01, noise_generator(0, 5, 0, 0)))


def test_count_skip_streak():
    c = dict(skipped=0, streak=0)
    assert [count_skip(s, c, 3, i) for i, s in enumerate([True, True, False, True, True, False])] == [False, False, True, False, False, True]
    assert c == dict(skipped=4, streak=0)
    with pytest.raises(TrainingError, match='3 non-finite'): [count_skip(True, c, 3, i) for i in range(3)]


# ---------------------------------------------------------------------------------------------------------------------
# Training longer, early stopping, the exported model, step times (issue 17/16 features)

def test_training_longer_is_the_planned_run(tmp_path, data, tok_dir):
    """A finished 6-step run extended to 9 with schedule_steps=6 equals a 9-step run planned with schedule_steps=6:
    the same cosine for 6 steps, then its floor; raising steps alone is refused, naming what works."""
    kw = dict(projector_lr=3e-2, micro_batch_size=4, val_every=0, save_every=0)
    planned = run(micro_cfg(tok_dir, tmp_path / 'planned', steps=9, schedule_steps=6, **kw), data)
    first = run(micro_cfg(tok_dir, tmp_path / 'ext', steps=6, **kw), data)
    assert first.finished and first.step == 6
    with pytest.raises(CheckpointError, match='set schedule_steps=6 too'):
        run(micro_cfg(tok_dir, tmp_path / 'ext', steps=9, **kw), data)
    extended = run(micro_cfg(tok_dir, tmp_path / 'ext', steps=9, schedule_steps=6, **kw), data)
    for key in ('loss', 'lrs', 'indices', 'grad_norm'):
        assert train_rows(extended, key) == train_rows(planned, key), key
    assert_same_weights(extended.model, planned.model)
    assert [closed_form_lr(s, 1e-2, 2, 6, 0.1) for s in range(6)] == pytest.approx(train_rows(extended, 'lr')[:6], rel=1e-12, abs=1e-18)
    assert train_rows(extended, 'lr')[6:] == pytest.approx([1e-2 * 0.1] * 3, rel=1e-12)
    with pytest.raises(ConfigError, match='min_lr_ratio > 0'):
        micro_cfg(tok_dir, tmp_path, steps=9, schedule_steps=6, min_lr_ratio=0.0)


def test_early_stopping_stops_finishes_and_resumes_stopped(tmp_path, data, tok_dir):
    "Patience 2 with an improvement that never counts: stops after the 3rd validation; finished, exported; a rerun stays."
    cfg = micro_cfg(tok_dir, tmp_path / 'e', val_every=2, save_every=0, early_stop_patience=2, early_stop_min_delta=1e3,
                    export='last')
    res = run(cfg, data)
    assert (res.step, res.stopped, res.finished) == (6, 'early stop', True)
    assert res.exported == tmp_path / 'e' / 'model' and (res.exported / 'config.json').exists()
    assert load_checkpoint(res.checkpoint)['early'] == dict(value=[r for r in res.records if r['kind'] == 'val'][0]['val_loss'], stale=2)
    again = run(cfg, data)
    assert (again.step, again.stopped) == (6, 'early stop') and train_rows(again, 'loss') == train_rows(res, 'loss')
    more = run(micro_cfg(tok_dir, tmp_path / 'e', val_every=2, save_every=0, early_stop_patience=3,
                         early_stop_min_delta=1e3, export='last'), data)      # more patience: it goes on
    assert (more.step, more.stopped) == (8, 'early stop')


def test_export_best_writes_the_weights_of_best_pt(tmp_path, data, tok_dir):
    "export=best: the exported folder holds best.pt's weights (EMA's), in bf16; export=last the last EMA weights."
    from cadrecode_nb.model import CADRecode
    kw = dict(ema_decay=0.5, best_mode='max', val_every=2, save_every=0, export_dtype='bf16')   # max: the first val is best
    best = run(micro_cfg(tok_dir, tmp_path / 'b', export='best', **kw), data)
    last = run(micro_cfg(tok_dir, tmp_path / 'l', export='last', **kw), data)
    assert best.best['step'] == 2
    ck = lambda d, name: checkpoint_weights(load_checkpoint(tmp_path / d / 'checkpoints' / name))
    for folder, want in ((best.exported, ck('b', 'best.pt')), (last.exported, ck('l', 'last.pt'))):
        got = CADRecode.from_pretrained(folder).state_dict()
        for k, v in want.items():
            if k in got: assert torch.equal(got[k], v.to(got[k].dtype)), k
    up = 'model.layers.0.mlp.up_proj.weight'
    assert CADRecode.from_pretrained(best.exported).state_dict()[up].dtype == torch.bfloat16
    assert not torch.equal(ck('b', 'best.pt')[up], ck('b', 'last.pt')[up])


def test_step_times_leave_pauses_out(tmp_path, data, tok_dir):
    """A tiny run that validates, evaluates (an evaluator that takes 0.5 s) and checkpoints after every 2nd step: in its
    history.jsonl no step's time holds a pause, the pauses are recorded apart, and no tokens/s is 3x the median."""
    slow = lambda model, tokenizer, step: time.sleep(0.5) or {}
    threads = torch.get_num_threads(); torch.set_num_threads(1)   # one thread: no OpenMP stalls on a shared, busy CPU
    try: run(micro_cfg(tok_dir, tmp_path / 't', steps=12, val_every=2, save_every=2, eval_every=2), data, evaluator=slow)
    finally: torch.set_num_threads(threads)
    hist = read_history(tmp_path / 't' / 'history.jsonl')
    steps, pauses = [r for r in hist if r['kind'] == 'train'], [r for r in hist if r['kind'] == 'pause']
    assert [p['step'] for p in pauses] == [2, 4, 6, 8, 10, 12] and all(p['pause_s'] >= 0.5 for p in pauses), pauses
    assert len(steps) == 12 and all(0 < r['step_s'] < 0.5 for r in steps), [r['step_s'] for r in steps]
    tps = [r['tokens_per_s'] for r in steps]
    assert max(tps) < 3 * np.median(tps), tps
