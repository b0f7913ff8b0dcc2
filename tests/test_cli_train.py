"""`cadrecode_train` as a user meets it: every expected failure ends in exit status 2 and at most 3 lines on stderr
that name the culprit, without a traceback; SIGINT in the middle of a run leaves a checkpoint of the step it was on and
prints the command that resumes it, and the resumed run ends exactly where an uninterrupted one does.

The failures that stop before any data is read run `main()` in this process (the same code as the console script,
without the interpreter's start-up); those that need a dataset, a disk or a signal run the real command in a
subprocess. The dataset is the tiny procedural one, 40 samples, built once for the module (about 25 s: the sandbox).
"""
import os, re, shlex, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest, torch

from cadrecode_nb.trainer import main, planned_parameters
from cadrecode_nb.run_parts import TrainConfig
from cadrecode_nb.checkpoints import checkpoint_mb, load_checkpoint, read_history
from cadrecode_nb.dataset import load_tokenizer, write_dataset

MICRO = ['model_kw.hidden_size=32', 'model_kw.intermediate_size=64', 'model_kw.num_hidden_layers=1',
         'model_kw.num_attention_heads=2', 'model_kw.num_key_value_heads=1']
ENV = dict(os.environ, OMP_NUM_THREADS='1')   # one thread: the same float sums in every run, and no oversubscription
ROOT_TMPFS = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('unshare'),
                                reason='a private tmpfs needs root and unshare (CI runs as root)')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli') / 'data'
    write_dataset(root, 'tiny', progress=False, n_samples=40, shard_size=40)
    return root


def micro_args(data_dir, out_dir, *extra, micro=True):
    "A one-layer model (`micro`; else tiny_config's) on the tiny data, on the CPU, quiet."
    sets = [a for kv in MICRO for a in ('--set', kv)] if micro else []
    return ['--config', 'tiny', '--data_dir', str(data_dir), '--build_data', '', '--out_dir', str(out_dir), '--device', 'cpu',
            '--batch_size', '4', '--micro_batch_size', '2', '--warmup_steps', '2', '--val_every', '0', '--no-progress',
            '--export', 'none', '--peak_flops', '1e12', *sets, *extra]


def cli(args, timeout=300, prefix=()):
    "The real command (`python -m cadrecode_nb.trainer` is `cadrecode_train`), optionally behind `prefix`."
    cmd = [*prefix, sys.executable, '-m', 'cadrecode_nb.trainer', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def in_process(args, capsys) -> tuple[int, str]:
    "(exit status, stderr) of `main(args)` run here."
    with pytest.raises(SystemExit) as e: main(args)
    return e.value.code, capsys.readouterr().err


def assert_clean_failure(code:int, err:str, *culprit:str):
    "Exit status 2, 1-3 lines on stderr, no traceback, the culprit named."
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, (code, err[-3000:])
    assert 'Traceback' not in err and 1 <= len(lines) <= 3, err[-3000:]
    assert lines[-1].startswith('cadrecode_train: error: '), err
    for c in culprit: assert c in err, (c, err)


# ---------------------------------------------------------------------------------------------------------------------
# Failures before any data is read

def test_config_key_typo(tmp_path, capsys):
    assert_clean_failure(*in_process(['--set', 'lrr=1e-3'], capsys), "unknown config key 'lrr'", "did you mean 'lr'")
    assert_clean_failure(*in_process(['--lrr', '1e-3'], capsys), '--lrr', "did you mean '--lr'")   # argparse: usage + error
    (tmp_path / 'mine.yaml').write_text('lr: 2e-4\nwarmup: 10\n')
    assert_clean_failure(*in_process(['--config', str(tmp_path / 'mine.yaml')], capsys),
                         'mine.yaml', "unknown key 'warmup'", "did you mean 'warmup_steps'")


def test_model_kw_typo(capsys):
    assert_clean_failure(*in_process(['--set', 'model_kw.hidden_sise=192'], capsys),
                         "config key 'model_kw'", "unknown key 'hidden_sise'", "did you mean 'hidden_size'")


def test_yaml_trap_in_a_mapping(capsys):
    "`{hidden_size:192}` is YAML for a key 'hidden_size:192' without a value; the message says to add the space."
    assert_clean_failure(*in_process(['--model_kw', '{hidden_size:192}'], capsys),
                         "config key 'model_kw'", 'YAML needs a space after the colon', '{hidden_size: 192}')


def test_unwritable_out_dir(tmp_path, capsys):
    (tmp_path / 'a_file').write_text('not a folder')
    out = tmp_path / 'a_file' / 'run'                    # root can write anywhere, but not inside a file
    assert_clean_failure(*in_process(['--out_dir', str(out), '--data_dir', str(tmp_path / 'none')], capsys),
                         f'out_dir folder {out} is not writable')


def test_missing_dataset_through_the_real_command(tmp_path):
    p = cli(['--data_dir', str(tmp_path / 'none'), '--build_data', '', '--out_dir', str(tmp_path / 'run')])
    assert_clean_failure(p.returncode, p.stderr, f"config key 'data_dir' = '{tmp_path / 'none'}'", 'no dataset there',
                         'cadrecode_data --out')


# ---------------------------------------------------------------------------------------------------------------------
# Failures with a dataset

def test_checkpoint_of_another_run(dataset, tmp_path, capsys):
    main(micro_args(dataset, tmp_path / 'run', '--steps', '6', '--stop_at', '2'))
    assert (tmp_path / 'run' / 'checkpoints' / 'step_00000002.pt').exists()
    assert_clean_failure(*in_process(micro_args(dataset, tmp_path / 'run', '--steps', '6', '--lr', '1e-2'), capsys),
                         'checkpoints/last.pt was trained with other values', 'lr: checkpoint 0.003 vs now 0.01',
                         "resume with the checkpoint's values", 'another out_dir')
    assert_clean_failure(*in_process(micro_args(dataset, tmp_path / 'run', '--steps', '9'), capsys),   # longer: refused,
                         'steps: checkpoint 6 vs now 9', 'set schedule_steps=6 too')                  # and told what works


def _tmpfs(folder:Path, size_kb:int, args) -> subprocess.CompletedProcess:
    "The command with `folder` a tmpfs of `size_kb` kB in a private mount namespace (nothing outside sees it)."
    script = f"mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(str(folder))} && " \
             f"{shlex.quote(sys.executable)} -m cadrecode_nb.trainer {shlex.join(args)}"
    return subprocess.run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script],
                          capture_output=True, text=True, timeout=300, env=ENV)


@ROOT_TMPFS
def test_no_room_for_a_checkpoint_is_found_before_the_model_is_built(dataset, tmp_path):
    (tmp_path / 'disk').mkdir()
    p = _tmpfs(tmp_path / 'disk', 256, micro_args(dataset, tmp_path / 'disk' / 'run', '--steps', '4', micro=False))
    assert_clean_failure(p.returncode, p.stderr, f"out_dir folder {tmp_path / 'disk' / 'run'} has 0 MB free",
                         'MB are needed', 'free some space or choose another folder')


@ROOT_TMPFS
def test_full_disk_while_saving_a_checkpoint(dataset, tmp_path):
    "Room for one checkpoint (the check before the start passes) but not for the second: DiskFullError's message."
    cfg = TrainConfig.load('tiny', MICRO + [f'data_dir={dataset}'])
    one_mb = checkpoint_mb(planned_parameters(cfg, load_tokenizer(dataset / 'tokenizer')))
    (tmp_path / 'disk').mkdir()
    p = _tmpfs(tmp_path / 'disk', int(1.6 * one_mb * 1024),
               micro_args(dataset, tmp_path / 'disk' / 'run', '--steps', '4', '--save_every', '1', '--keep_last', '1'))
    assert_clean_failure(p.returncode, p.stderr, 'no space left on device while', 'free some space')
    assert 'step_00000002.pt' in p.stderr or 'history.jsonl' in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------------------------------
# SIGINT in the middle of a run

def _train_rows(out_dir:Path) -> list[tuple]:
    return [(r['step'], r['loss'], r['lr'], r['grad_norm']) for r in read_history(out_dir / 'history.jsonl') if r['kind'] == 'train']


def test_sigint_checkpoints_the_step_and_the_resumed_run_is_the_uninterrupted_one(dataset, tmp_path):
    steps = '300'   # enough that the run is still going when the signal comes (a step takes milliseconds)
    args = micro_args(dataset, tmp_path / 'cut', '--steps', steps, '--log_every', '1', '--save_every', '1000')
    proc = subprocess.Popen([sys.executable, '-m', 'cadrecode_nb.trainer', *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    history, t0 = tmp_path / 'cut' / 'history.jsonl', time.time()
    while not (history.exists() and len(history.read_text().splitlines()) >= 5):   # training is under way
        assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    m = re.search(r'stopped by SIGINT after step (\d+), checkpoint written; resume with:\n  (.+)', err)
    assert m and 'Traceback' not in err, err[-3000:]
    step = int(m.group(1))
    assert 5 <= step < int(steps)
    assert load_checkpoint(tmp_path / 'cut' / 'checkpoints' / 'last.pt')['step'] == step      # the step it was on
    assert _train_rows(tmp_path / 'cut')[-1][0] == step
    assert shlex.split(m.group(2)) == ['cadrecode_train', *args]                               # the same command again
    resumed = cli(args)
    assert resumed.returncode == 0 and f'at step {step}' in resumed.stdout, resumed.stderr[-3000:]
    whole = cli(micro_args(dataset, tmp_path / 'whole', '--steps', steps, '--log_every', '1', '--save_every', '1000'))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert _train_rows(tmp_path / 'cut') == _train_rows(tmp_path / 'whole')                   # value for value
    a = load_checkpoint(tmp_path / 'cut' / 'checkpoints' / 'last.pt')
    b = load_checkpoint(tmp_path / 'whole' / 'checkpoints' / 'last.pt')
    assert a['step'] == b['step'] == int(steps)
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in b['model'])
    assert all(torch.equal(x, y) for k in b['optimizer']['state'] for x, y in
               zip(a['optimizer']['state'][k].values(), b['optimizer']['state'][k].values()))
