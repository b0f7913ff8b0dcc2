"""The console scripts fail like good tools: an expected failure (bad input, a missing file, a config error, a model that
is not there, a folder that cannot be written, a full disk) is at most a few lines on stderr that name the culprit, exit
status 2 and no traceback; a folder of inputs with a bad file in it is evaluated without that file, which is listed in
skipped.jsonl; `--strict` stops at the first bad input instead. `--help` lists every option with its default.

`cadrecode_eval` and `cadrecode_reproduce` are this area's; `cadrecode_data` is tested as a black box through its `main`.
"""
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

import cadrecode_nb.eval as ev
from cadrecode_nb.core import KitError
from cadrecode_nb.dataset import main as data_main
from cadrecode_nb.eval import GenerateConfig, ScoreConfig, main as eval_main, read_jsonl
from cadrecode_nb.reproduce import ReproducePreset, main as reproduce_main

NAN_STL = 'solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex nan 1 0\nendloop\nendfacet\nendsolid x\n'
FLAT_STL = 'solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex 2 0 0\nendloop\nendfacet\nendsolid x\n'


def call(main, argv, capsys) -> tuple[int, str, str]:
    "(exit status, stdout, stderr) of a console script's `main(argv)` in this process"
    try: code = main([str(a) for a in argv])   # a console script does sys.exit(main()): None is 0, an object prints and is 1
    except SystemExit as e: code = e.code
    code = 0 if code is None else code if isinstance(code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code, err, *culprits):
    "Exit status 2, at most 3 lines on stderr, each culprit named, no traceback"
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert 1 <= len(lines) <= 3, err
    assert 'Traceback' not in err, err
    for c in culprits: assert str(c) in err, (c, err)


@pytest.fixture(scope='module')
def saved_model(tmp_path_factory):
    "An untrained tiny CADRecode and its tokenizer, saved the way the trainer exports them"
    import torch
    from cadrecode_nb.dataset import train_code_tokenizer
    from cadrecode_nb.model import CADRecode, tiny_config
    from cadrecode_nb.programs import random_programs
    tok = train_code_tokenizer(random_programs(seed=1, n=60), vocab_size=300)
    torch.manual_seed(0)
    model = CADRecode(tiny_config(len(tok), num_hidden_layers=1, hidden_size=64, intermediate_size=128)).eval()
    out = tmp_path_factory.mktemp('model') / 'saved'
    model.save_pretrained(out); tok.save_pretrained(out)
    return out


def mesh_folder(root:Path, good:int=0, **bad) -> Path:
    "A folder with `good` box meshes and bad files given as name=content (bytes or text)"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(good): trimesh.creation.box((40 + 10 * i, 20, 10)).export(root / f'part{i}.stl')
    for name, content in bad.items():
        (root / name).write_bytes(content) if isinstance(content, bytes) else (root / name).write_text(content)
    return root


# ---- cadrecode_eval: each expected failure is one clean line --------------------------------------------------------
BAD_FOLDERS = {'empty folder': ({}, 'neither a dataset'),
               '0-byte stl': ({'zero.stl': b''}, 'zero.stl: empty file'),
               'text named stl': ({'notes.stl': 'these are notes, not a mesh\n'}, 'notes.stl: the mesh has no triangles'),
               'NaN vertices': ({'nan.stl': NAN_STL}, 'nan.stl: 1 of 3 vertices have NaN/inf coordinates'),
               'zero-area mesh': ({'flat.stl': FLAT_STL}, 'flat.stl: the mesh has no surface area')}


@pytest.mark.parametrize('case', list(BAD_FOLDERS))
def test_eval_bad_mesh_folder(case, tmp_path, saved_model, capsys):
    files, culprit = BAD_FOLDERS[case]
    folder = mesh_folder(tmp_path / 'meshes', **files)
    code, _, err = call(eval_main, ['generate', '--model', saved_model, '--meshes', folder, '--out', tmp_path / 'out'], capsys)
    assert_clean_failure(code, err, culprit)


def test_eval_missing_path(tmp_path, saved_model, capsys):
    code, _, err = call(eval_main, ['generate', '--model', saved_model, '--meshes', tmp_path / 'nowhere', '--out', tmp_path / 'o'], capsys)
    assert_clean_failure(code, err, tmp_path / 'nowhere', 'no such folder')


def test_eval_bad_jsonl(tmp_path, capsys):
    gen = tmp_path / 'gen'; gen.mkdir()
    (gen / 'generations.jsonl').write_text('{"id": "a", "programs": ["r=1"], "gt_mesh": "a.stl"\nnot json at all\n')
    np.savez(gen / 'inputs.npz', ids=np.array(['a']), points=np.zeros((1, 256, 3), np.float32))
    code, _, err = call(eval_main, ['score', '--generations', gen, '--no-plots'], capsys)
    assert_clean_failure(code, err, 'generations.jsonl', 'not valid JSON')
    assert not (gen / 'results.jsonl').exists()


def test_eval_model_that_is_not_there(tmp_path, monkeypatch, capsys):
    "A name that looks local and is not there is an immediate error, without asking the hub"
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'model_info', lambda *a, **kw: pytest.fail('the hub was asked about a local path'))
    folder = mesh_folder(tmp_path / 'meshes', good=1)
    for name in ('no_such_dir', 'runs/tiny/model', './model'):
        code, _, err = call(eval_main, ['generate', '--model', name, '--meshes', folder, '--out', tmp_path / 'o'], capsys)
        assert_clean_failure(code, err, f'{name}: no such local folder (a Hugging Face hub id is written org/name)')
    not_a_model = mesh_folder(tmp_path / 'folder', good=1)
    code, _, err = call(eval_main, ['generate', '--model', not_a_model, '--meshes', folder, '--out', tmp_path / 'o'], capsys)
    assert_clean_failure(code, err, 'not a saved model', 'config.json')


def test_eval_model_not_there_in_a_fresh_process(tmp_path):
    "The installed command, from a fresh interpreter: no hub retries, no chained tracebacks"
    folder = mesh_folder(tmp_path / 'meshes', good=1)
    p = subprocess.run([sys.executable, '-c', 'from cadrecode_nb.eval import main; main()', 'generate', '--model', 'no_such_dir',
                        '--meshes', str(folder), '--out', str(tmp_path / 'o')], capture_output=True, text=True, timeout=120)
    assert_clean_failure(p.returncode, p.stderr, 'no_such_dir: no such local folder')


def test_eval_hub_unreachable_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    def no_network(*a, **kw): raise ConnectionError('[Errno -2] Name or service not known')
    monkeypatch.setattr(huggingface_hub, 'model_info', no_network)
    monkeypatch.setattr(huggingface_hub, 'try_to_load_from_cache', lambda *a, **kw: None)
    folder = mesh_folder(tmp_path / 'meshes', good=1)
    code, _, err = call(eval_main, ['generate', '--model', 'some-org/some-model', '--meshes', folder, '--out', tmp_path / 'o'], capsys)
    assert_clean_failure(code, err, 'some-org/some-model', 'hub cannot be reached')


def test_eval_unwritable_out_before_the_model_loads(tmp_path, saved_model, monkeypatch, capsys):
    (tmp_path / 'file').write_text('a file, not a folder')
    monkeypatch.setattr(ev, 'load_model', lambda *a, **kw: pytest.fail('the model was loaded before --out was checked'))
    folder = mesh_folder(tmp_path / 'meshes', good=1)
    code, _, err = call(eval_main, ['generate', '--model', saved_model, '--meshes', folder, '--out', tmp_path / 'file' / 'out'], capsys)
    assert_clean_failure(code, err, tmp_path / 'file' / 'out', 'not writable')


def test_eval_disk_full(tmp_path, saved_model, monkeypatch, capsys):
    import cadrecode_nb.core as core
    from collections import namedtuple
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(core.shutil, 'disk_usage', lambda p: usage(10 * 2**20, 10 * 2**20, 2**19))   # 0.5 MB free
    folder = mesh_folder(tmp_path / 'meshes', good=1)
    code, _, err = call(eval_main, ['generate', '--model', saved_model, '--meshes', folder, '--out', tmp_path / 'out'], capsys)
    assert_clean_failure(code, err, tmp_path / 'out', 'MB free')


def test_eval_config_errors(tmp_path, saved_model, capsys):
    folder = mesh_folder(tmp_path / 'meshes', good=1)
    for extra, culprit in [(['--top-p', '2'], "'top_p'"), (['--candidates', 'many'], "'candidates'"),
                           (['--set', 'candiates=3'], "did you mean 'candidates'"), (['--data', folder], 'not both')]:
        code, _, err = call(eval_main, ['generate', '--model', saved_model, '--meshes', folder, '--out', tmp_path / 'o', *extra], capsys)
        assert_clean_failure(code, err, culprit)
    code, _, err = call(eval_main, ['generate', '--meshes', folder, '--out', tmp_path / 'o'], capsys)
    assert_clean_failure(code, err, '--model is required')


def test_eval_argparse_errors_are_one_line(capsys):
    for argv, culprit in [(['generate', '--modle', 'x'], "unknown option '--modle' (did you mean '--model'?)"),
                          ([], 'the following arguments are required'), (['evaluate'], "invalid choice: 'evaluate'")]:
        code, _, err = call(eval_main, argv, capsys)
        assert_clean_failure(code, err, culprit)


def test_eval_debug_shows_the_traceback(tmp_path):
    with pytest.raises(KitError, match='no such local folder'):
        eval_main(['generate', '--model', 'no_such_dir', '--meshes', str(tmp_path), '--out', str(tmp_path / 'o'), '--debug'])


# ---- cadrecode_eval: folders with bad inputs are evaluated without them ----------------------------------------------
def test_eval_run_skips_a_bad_mesh(tmp_path, saved_model, capsys):
    "One bad and two good meshes: two results, one skipped row with its reason, the count in the summary and the table"
    folder = mesh_folder(tmp_path / 'meshes', good=2, **{'broken.stl': b''})
    code, out, err = call(eval_main, ['run', '--model', saved_model, '--meshes', folder, '--out', tmp_path / 'out',
                                      '--max-new-tokens', 16, '--workers', 1, '--no-plots'], capsys)
    assert code == 0, err
    assert len(read_jsonl(tmp_path / 'out' / 'results.jsonl')) == 2
    skipped = read_jsonl(tmp_path / 'out' / 'skipped.jsonl')
    assert [(s['id'], s['reason'], s['step']) for s in skipped] == [('broken', 'empty file', 'generate')]
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['n_skipped'] == 1
    assert '1 input(s) left out' in out and 'skipped' in out


def test_eval_strict_fails_fast(tmp_path, saved_model, monkeypatch, capsys):
    "--strict: the first bad input stops the run, before the model is loaded or a program runs"
    folder = mesh_folder(tmp_path / 'meshes', good=2, **{'broken.stl': b''})
    monkeypatch.setattr(ev, 'load_model', lambda *a, **kw: pytest.fail('the model was loaded after a bad input'))
    code, _, err = call(eval_main, ['generate', '--model', saved_model, '--meshes', folder, '--out', tmp_path / 'out', '--strict'], capsys)
    assert_clean_failure(code, err, 'broken.stl: empty file', '--strict')
    assert not (tmp_path / 'out' / 'generations.jsonl').exists()
    gen = tmp_path / 'gen'; gen.mkdir()
    (gen / 'generations.jsonl').write_text('{"id": "a", "programs": ["r=1"], "gt_mesh": "a.stl"}\n{"id": "b", "programs": []}\n')
    np.savez(gen / 'inputs.npz', ids=np.array(['a', 'b']), points=np.zeros((2, 256, 3), np.float32))
    import cadrecode_nb.sandbox as sandbox
    monkeypatch.setattr(sandbox, 'CadWorkerPool', lambda *a, **kw: pytest.fail('the sandbox started after a bad item'))
    code, _, err = call(eval_main, ['score', '--generations', gen, '--strict'], capsys)
    assert_clean_failure(code, err, 'generations.jsonl:2', 'no programs')


# ---- --help lists every option with its default -----------------------------------------------------------------------
@pytest.mark.parametrize('command, classes', [('generate', [GenerateConfig]), ('score', [ScoreConfig]),
                                              ('run', [GenerateConfig, ScoreConfig])])
def test_eval_help_lists_every_key(command, classes, capsys):
    code, out, _ = call(eval_main, [command, '--help'], capsys)
    assert code == 0
    for cls in classes:
        defaults = cls()
        for key in cls.keys():
            if command == 'run' and key == 'generations': continue   # run reads what it generated
            assert f"--{key.replace('_', '-')}" in out, key
            assert repr(getattr(defaults, key)).split('\n')[0][:10] in ' '.join(out.split()), key
    assert out.count('(default:') >= sum(len(c.keys()) for c in classes) - (command == 'run') * 3


def test_reproduce_help_lists_keys_and_presets(capsys):
    code, out, _ = call(reproduce_main, ['--help'], capsys)
    assert code == 0
    for key in ReproducePreset.keys(): assert f"--{key.replace('_', '-')}" in out, key
    assert 'shipped presets' in out
    for name in ReproducePreset.presets(): assert f'\n  {name} ' in out, name
    assert "(default: 40)" in out and 'nucleus sampling' in out


# ---- cadrecode_reproduce ---------------------------------------------------------------------------------------------
def test_reproduce_failures(tmp_path, capsys):
    (tmp_path / 'file').write_text('a file')
    for argv, culprits in [(['--preset', 'huge'], ["'huge'", 'tiny']),
                           (['--set', 'n_tset=3'], ["'n_tset'", "did you mean 'n_test'"]),
                           (['--set', 'train_kw.stepz=3'], ["'stepz'"]),
                           (['--data-dir', tmp_path / 'nowhere', '--stages', 'data'], [tmp_path / 'nowhere', 'does not exist']),
                           (['--stages', 'data,trian'], ["'trian'"]),
                           (['--stagse', 'data'], ["'--stagse'", "did you mean '--stages'?"])]:
        code, _, err = call(reproduce_main, [*argv, '--out', tmp_path / 'run'], capsys)
        assert_clean_failure(code, err, *culprits)
    code, _, err = call(reproduce_main, ['--out', tmp_path / 'file' / 'run', '--stages', 'data'], capsys)
    assert_clean_failure(code, err, tmp_path / 'file' / 'run', 'not writable')


# ---- cadrecode_data (another area's command, through its main) -------------------------------------------------------
def test_data_failures(tmp_path, capsys):
    (tmp_path / 'file').write_text('a file')
    for argv, culprits in [(['--preset', 'huge'], ["'huge'"]),
                           (['--n-smaples', '10'], ['--n-smaples']),
                           (['--set', 'n_sampels=10'], ["'n_sampels'", "did you mean 'n_samples'"]),
                           (['--out', tmp_path / 'file' / 'data'], [tmp_path / 'file' / 'data'])]:
        code, _, err = call(data_main, [*argv, '--no-progress', *(['--out', tmp_path / 'd'] if '--out' not in argv else [])], capsys)
        assert_clean_failure(code, err, *culprits)
