"""cadrecode_reproduce: stages skipped when done, --force, interrupted stages redone, clear errors, the report, and a
train/generate half that runs without CadQuery (as on the GPU machine) with score/report on the carried-back folder.

One miniature run (60 samples, a one-layer model, 3 test parts x 2 candidates) is shared by the tests of this module.
"""
import json, subprocess, sys, re
from pathlib import Path

import pytest

from cadrecode_nb.dataset import write_dataset
from cadrecode_nb.reproduce import *

MINI = ['name=mini', 'n_test=3', 'num_candidates=2', 'max_new_tokens=64', 'gen_batch_size=4', 'workers=2', 'n_gallery=1',
        'torch_threads=1', 'train_kw.steps=12', 'train_kw.warmup_steps=2', 'train_kw.val_every=0', 'train_kw.save_every=4',
        'train_kw.model_kw={num_hidden_layers: 1, hidden_size: 64, intermediate_size: 128}', 'train_kw.peak_flops=1e12',
        'train_kw.progress=false']


def sets(extra=()):
    return [a for s in [*MINI, *extra] for a in ('--set', s)]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('data') / 'mini'
    write_dataset(d, 'tiny', n_samples=60, shard_size=30, progress=False)
    return d


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, data_dir):
    "A full run: data, train and generate in a subprocess where `import cadquery` fails, then score and report here."
    out = tmp_path_factory.mktemp('runs') / 'run'
    code = ("import sys; sys.modules['cadquery'] = None\n"   # any import of cadquery now raises ImportError
            "from cadrecode_nb.reproduce import main\n"
            f"main({['--out', str(out), '--data-dir', str(data_dir), '--stages', 'data,train,generate', '--no-progress', *sets()]!r})\n"
            "assert sys.modules['cadquery'] is None\n")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert 'stage generate:' in p.stdout and 'cadquery' not in p.stderr.lower(), p.stderr[-2000:]
    preset = ReproducePreset.load('tiny', [*MINI, f'data_dir={data_dir}'])
    run_reproduction(out, preset, stages='score,report', progress=False)   # the CPU half, on the same folder
    return out


def preset_for(data_dir, extra=()):
    return ReproducePreset.load('tiny', [*MINI, f'data_dir={data_dir}', *extra])


def mtimes(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in Path(folder).rglob('*') if p.is_file()}


def test_train_generate_without_cadquery_then_score_report(run_dir):
    run = ReproduceRun(run_dir, ReproducePreset(num_candidates=2))
    assert all(run.is_done(s) for s in STAGES)
    assert (run_dir / 'train' / 'model' / 'config.json').exists() and not (run_dir / 'model').exists()   # exported once
    assert all(f.stat().st_size <= 16 * 2**20 for f in (run_dir / 'train' / 'model').iterdir())
    assert run.record('train')['info']['model_files'] == len(list((run_dir / 'train' / 'model').iterdir()))
    assert sorted(p.name for p in (run_dir / 'score').iterdir()) == ['greedy', 'k2']
    machines = {run.record(s)['machine']['host'] for s in STAGES}
    assert machines   # each marker says where its stage ran


def test_report_has_table_and_existing_pngs(run_dir):
    md = (run_dir / 'report' / 'report.md').read_text()
    for row in ('| this kit, 1 candidate (greedy) |', '| this kit, 2 candidates, picked by input |', 'DeepCAD', 'Different test sets',
                '## What ran', '## Why programs fail', 'loss and learning rate'):
        assert row in md, row
    links = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', md)
    assert {'training.png', 'cd_hist.png'} <= set(links)
    for link in links: assert (run_dir / 'report' / link).exists(), link
    summary = json.loads((run_dir / 'score' / 'k2' / 'summary.json').read_text())
    assert f"| {summary['first']['n']} |" in md


def test_rerun_skips_finished_stages(run_dir, data_dir, capsys):
    before = mtimes(run_dir)
    run_reproduction(run_dir, preset_for(data_dir), progress=False)
    out = capsys.readouterr().out
    for s in STAGES: assert f'stage {s}: done, skipped' in out
    after = mtimes(run_dir)
    changed = [f for f in before if after.get(f) != before[f]]
    assert changed == ['run.json'], changed   # only the log of invocations


def test_force_redoes_stage_and_later_ones(run_dir, data_dir, capsys):
    before = mtimes(run_dir)
    run_reproduction(run_dir, preset_for(data_dir), force='score', progress=False)
    out = capsys.readouterr().out
    assert 'stage train: done, skipped' in out and 'stage generate: done, skipped' in out
    after = mtimes(run_dir)
    for f in ('stages/score.json', 'stages/report.json', 'score/k2/results.jsonl', 'report/report.md'):
        assert after[f] != before[f], f
    for f in ('stages/data.json', 'stages/train.json', 'stages/generate.json', 'generate/k2/generations.jsonl'):
        assert after[f] == before[f], f


def test_interrupted_stage_is_redone(tmp_path, data_dir, capsys):
    out = tmp_path / 'run'
    run = run_reproduction(out, preset_for(data_dir, ['train_kw.stop_at=4']), stages='data,train', progress=False)
    assert 'stage train: not finished' in capsys.readouterr().out
    assert run.is_done('data') and not run.is_done('train') and (out / 'train' / 'checkpoints' / 'last.pt').exists()
    run = run_reproduction(out, preset_for(data_dir), stages='data,train', progress=False)
    log = capsys.readouterr().out
    assert 'stage data: done, skipped' in log and 'resumed from' in log and run.is_done('train')
    assert run.record('train')['info']['steps'] == 12
    # a stage killed before its marker (here: the marker removed) runs again; the others stay skipped
    run.marker('train').unlink()
    (out / 'train' / 'model').rename(out / 'model_gone')   # as if killed before the export finished
    run_reproduction(out, preset_for(data_dir), stages='data,train', progress=False)
    assert run.is_done('train') and (out / 'train' / 'model' / 'config.json').exists()


def test_clear_errors(tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit) as e: main(['--preset', 'huge', '--out', str(tmp_path / 'x')])
    assert e.value.code == 2 and "'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(['--data-dir', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x'), '--stages', 'data'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(tmp_path / 'nowhere') in err
    half = tmp_path / 'half'; half.mkdir(); (half / 'shard_00000.npz').write_bytes(b'')
    with pytest.raises(SystemExit) as e: main(['--data-dir', str(half), '--out', str(tmp_path / 'x'), '--stages', 'data'])
    err = capsys.readouterr().err
    assert str(half) in err and 'unfinished' in err
    with pytest.raises(SystemExit) as e: main(['--out', str(tmp_path / 'x'), '--stages', 'data,trian'])
    assert "'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(['--out', str(tmp_path / 'y'), '--stages', 'score', *sets()])
    err = capsys.readouterr().err
    assert 'generations.jsonl' in err and "'generate'" in err
    with pytest.raises(SystemExit) as e: main(['--set', 'n_tset=3', '--out', str(tmp_path / 'x')])
    assert "'n_tset'" in capsys.readouterr().err


def test_report_is_rendered_from_the_template(run_dir, data_dir, tmp_path, monkeypatch):
    "write_report fills the package's template: another template file gives another report, from the same run folder"
    import cadrecode_nb.reproduce as rp
    (tmp_path / 'report.md.j2').write_text('{{ preset.name }}: {{ n_items }} parts, k={{ k }}, {{ skipped|length }} skipped\n'
                                           '{% for lines in failures %}{{ lines[0] }}\n{% endfor %}')
    monkeypatch.setattr(rp, 'template_dir', lambda: tmp_path)
    run = ReproduceRun(run_dir, preset_for(data_dir))
    md = write_report(run, progress=False).read_text()
    n = json.loads((run_dir / 'score' / 'k2' / 'summary.json').read_text())['first']['n']
    assert md.startswith(f'mini: {n} parts, k=2, 0 skipped\n- **greedy**: ') and '- **k2**: ' in md
    monkeypatch.undo()
    skipped = run_dir / 'score' / 'k2' / 'skipped.jsonl'
    skipped.write_text(json.dumps(dict(id='test-9', source='item test-9', reason='ground truth: no volume', step='score')) + '\n')
    try: assert 'Left out: 1 test part(s) whose ground truth' in write_report(run, progress=False).read_text()
    finally: skipped.write_text('')
    write_report(run, progress=False)   # the shipped template again, for the other tests


def test_generate_side_prints_no_warning(tmp_path, data_dir):
    "The GPU half from a fresh interpreter, warnings filtered as by default: none comes from this kit's code paths"
    code = ("import warnings, sys; sys.modules['cadquery'] = None\n"
            "from cadrecode_nb.reproduce import main\n"
            f"main({['--out', str(tmp_path / 'run'), '--data-dir', str(data_dir), '--stages', 'data,train,generate', '--no-progress', *sets(['train_kw.steps=4', 'train_kw.save_every=0'])]!r})\n")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    warned = [l for l in p.stderr.splitlines() if 'Warning' in l and 'past_key_values' not in l]   # that one is the model's
    assert warned == [], warned


def test_run_folder_made_before_the_single_export(tmp_path):
    "A run folder from before the trainer exported the travelling form itself keeps its <out>/model"
    assert ReproduceRun(tmp_path / 'new', ReproducePreset()).model_dir == tmp_path / 'new' / 'train' / 'model'
    (tmp_path / 'old' / 'model').mkdir(parents=True); (tmp_path / 'old' / 'model' / 'config.json').write_text('{}')
    assert ReproduceRun(tmp_path / 'old', ReproducePreset()).model_dir == tmp_path / 'old' / 'model'
