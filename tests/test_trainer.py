"""Trainer: exact resume, checkpoints that survive SIGKILL, corrupt-checkpoint fallback, DDP over gloo, guards, CLI.

Everything runs on CPU with a one-layer Qwen2 (hidden 32) on in-memory data: random point clouds paired with
programs from the kit's generator (the trainer does not care whether they match), so no sandbox is needed.
"""
import json, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np, pytest, torch

from cadrecode_nb.trainer import *
from cadrecode_nb.trainer import _pairs
from cadrecode_nb.data import train_code_tokenizer

MICRO_MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)


def make_data(n=40, seed=0):
    "n items: (256,3) random clouds in [-1,1] with generated programs."
    from cadrecode_nb.data import generate_programs
    g = torch.Generator().manual_seed(seed)
    return [dict(points=torch.rand(256, 3, generator=g) * 2 - 1, code=c, index=i)
            for i, c in enumerate(generate_programs(seed, n))]


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
                out_dir=str(out_dir), progress=False, log_every=1, record_indices=True, export=False, device='cpu',
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
    from cadrecode_nb.data import load_tokenizer
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
    with pytest.raises(FloatingPointError, match='2 non-finite'):
        run(cfg, data, model=_Faulty(_inner(tok_dir), nan_calls={3, 4}))


def test_out_of_memory_names_what_to_lower(tmp_path, data, tok_dir):
    cfg = micro_cfg(tok_dir, tmp_path / 'a')
    with pytest.raises(RuntimeError, match=r"out of memory at step 1 with micro_batch_size=2.*Lower micro_batch_size"):
        run(cfg, data, model=_Faulty(_inner(tok_dir), oom=True))


# ---------------------------------------------------------------------------------------------------------------------
def test_shipped_configs_and_cli(tmp_path, capsys):
    for name in ('paper', 'tiny', 'small'):
        cfg = load_config(name)
        assert TrainConfig.from_yaml(config_dir() / f'{name}.yaml') == cfg
    paper = load_config('paper')
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
    assert "bad.yaml: unknown config key(s) ['warmup'] (did you mean 'warmup_steps'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit): main(['--config', 'tiny', '--data_dir', str(tmp_path / 'none'), '--build_data', ''])
    assert 'no dataset there' in capsys.readouterr().err
    assert _pairs(['--steps=5', '--compile']) == ['steps=5', 'compile=true']
