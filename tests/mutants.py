"""Mutation check of the tests of `metrics`, `eval`, `points`, `dataset` and `trainer`: run by hand, not in CI (pytest does not collect this file).

    python tests/mutants.py                  # every mutant (about 8 minutes on 2 CPU cores)
    python tests/mutants.py --only pick_against_gt clip_coef_one   # some of them
    python tests/mutants.py --list           # names, files and the tests each one runs
    python tests/mutants.py --notebooks      # also the notebooks' own tests on the six named bugs of issue 22 (+5 min)

The repository (tracked files and untracked ones git does not ignore, so uncommitted tests count) is copied into a
temporary folder. Each mutant is one exact text replacement in an exported module `cadrecode_nb/*.py` of that copy
(the script stops if the text is not there exactly once, so it can never test an unchanged library); the tests named
for it run in the copy with the copy first on PYTHONPATH (checked: the package is installed editable from the
original checkout), and the file is restored. A mutant is *killed* when at least one of its tests fails. Before any
mutant, the same tests must pass on the unchanged copy, or the table would mean nothing.

`--notebooks` applies the six bugs of issue 22 to the source notebook in the copy as well and runs `nbdev_test` on it
(minutes per notebook), to show that the inline tests next to each piece catch them too.
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
M, D, T = 'tests/test_metrics.py::', 'tests/test_data.py::', 'tests/test_trainer.py::'
C = 'tests/test_cli.py::'


@dataclass
class Mutant:
    name: str
    module: str            # exported module, e.g. 'eval' (cadrecode_nb/eval.py; notebook from its header)
    old: str               # exact text, must occur once
    new: str
    tests: list            # pytest node ids expected to catch it (old tests first, the ones added for issue 22 after)
    named: bool = False    # one of the six survivors named in issue 22
    why: str = ''


# old tests of a piece first, then the tests added for issue 22: the "failed" column shows which ones catch the bug
_CD = [M + 'test_score_item_picks_by_input_and_never_an_invalid_candidate',
       M + 'test_score_item_cd_is_the_two_sided_chamfer_of_its_samples']
_PICK = [M + 'test_score_item_picks_by_input_and_never_an_invalid_candidate',
         M + 'test_score_item_picks_by_input_when_input_and_ground_truth_disagree']
_LR = [T + 'test_resume_is_exact', T + 'test_schedule_is_the_closed_form', T + 'test_logged_lr_is_the_closed_form']
_CLIP = [T + 'test_resume_is_exact', T + 'test_clip_coef_is_the_hand_formula', T + 'test_apply_update_clips_to_max_norm',
         T + 'test_training_clips_the_gradient']

MUTANTS = [
    # ---- metrics: the numbers as reported and the pick ------------------------------------------------------------
    Mutant('score_cd_one_sided', 'metrics', "c['cd'] = CD_SCALE * (_mean_sq_nn(tree, gt_points) + _mean_sq_nn(gt_tree, pts))",
           "c['cd'] = CD_SCALE * _mean_sq_nn(tree, gt_points)", _CD, named=True,
           why='the reported CD made one-sided inside score_item'),
    Mutant('pick_against_gt', 'metrics', "picked, oracle = best_index([c['input_cd'] for c in cands])",
           "picked, oracle = best_index([c['cd'] for c in cands])", _PICK, named=True,
           why='the pick "by input cloud" made against the ground truth (oracle leak)'),
    Mutant('input_cd_one_sided', 'metrics', "(_mean_sq_nn(tree, target.unit_input) + _mean_sq_nn(in_tree, pts))",
           "(_mean_sq_nn(tree, target.unit_input))", _CD + _PICK[1:]),
    Mutant('candidate_same_seed', 'metrics', 'pts = sample_surface(mesh, n_points, seed + 1)',
           'pts = sample_surface(mesh, n_points, seed)', _CD),
    Mutant('chamfer_one_sided', 'metrics', 'return _mean_sq_nn(cKDTree(b), a) + _mean_sq_nn(cKDTree(a), b)',
           'return _mean_sq_nn(cKDTree(b), a)', [M + 'test_cd_shifted_cube_matches_brute_force']),
    Mutant('cd_not_squared', 'metrics', 'np.mean(np.square(tree.query(points, k=1)[0]))', 'np.mean(tree.query(points, k=1)[0])',
           [M + 'test_cd_shifted_cube_matches_brute_force'] + _CD[1:]),
    Mutant('unit_cube_scale', 'metrics', 'm.apply_scale(1 / extent)', 'm.apply_scale(0.5 / extent)', [M + 'test_normalizations']),
    Mutant('demo_scale', 'metrics', 'm.apply_scale(1 / 200)', 'm.apply_scale(1 / 100)', [M + 'test_normalizations']),
    Mutant('input_not_mapped', 'metrics', 'return np.asarray(points, dtype=np.float64) / 2 + 0.5',
           'return np.asarray(points, dtype=np.float64)', [M + 'test_normalizations'] + _CD[1:]),
    Mutant('score_normalization_ignored', 'metrics', 'mesh = normalize_prediction(result_mesh(res), normalization)',
           "mesh = normalize_prediction(result_mesh(res), 'bbox')", _CD),
    Mutant('iou_union_keeps_intersection', 'metrics', 'sum(p.volume for p in pred) - inter', 'sum(p.volume for p in pred)',
           [M + 'test_iou_self_disjoint_and_analytic']),
    Mutant('iou_not_for_picked', 'metrics', 'for i in {0, picked, oracle} & set(meshes):', 'for i in {0, oracle} & set(meshes):',
           _PICK),
    Mutant('best_index_max', 'metrics', 'return min(valid)[1] if valid else 0', 'return max(valid)[1] if valid else 0',
           [M + 'test_invalidity_ratio_and_best_index']),
    Mutant('best_index_keeps_nan', 'metrics', 'if s is not None and np.isfinite(s)]', 'if s is not None]',
           [M + 'test_invalidity_ratio_and_best_index', M + 'test_summarize_by_hand']),
    Mutant('ir_inverted', 'metrics', 'return 1 - sum(map(bool, valid)) / len(valid)', 'return sum(map(bool, valid)) / len(valid)',
           [M + 'test_invalidity_ratio_and_best_index', M + 'test_summarize_by_hand']),
    Mutant('median_is_mean', 'metrics', 'median_cd=float(np.median(cds))', 'median_cd=float(np.mean(cds))',
           [M + 'test_score_item_picks_by_input_and_never_an_invalid_candidate', M + 'test_summarize_by_hand']),
    # ---- eval and metrics: bad inputs, model names, what the progress bar and the plots say (issue 16) ------------
    Mutant('strict_ignored', 'eval', 'if strict: raise InputError(', 'if False: raise InputError(',
           [C + 'test_eval_strict_fails_fast', M + 'test_mesh_folder_skips_bad_files_with_their_reason']),
    Mutant('generate_skips_dropped', 'eval', "if r and r.get('step') == 'generate']", "if False]",
           [C + 'test_eval_run_skips_a_bad_mesh']),
    Mutant('any_name_is_a_hub_id', 'eval', 'if not _HUB_ID.fullmatch(str(name)):', 'if False:',
           [C + 'test_eval_model_that_is_not_there']),
    Mutant('progress_counts_clouds', 'eval', 'done += len(chunk) * k', 'done += len(chunk)',
           [M + 'test_generate_progress_moves_per_batch']),
    Mutant('one_candidate_called_picked', 'metrics', "if k == 1: return 'one candidate'", "if False: return 'one candidate'",
           [M + 'test_plots_say_which_candidate_and_their_units']),
    Mutant('log_minor_labels_back', 'metrics', 'axis.set_minor_formatter(NullFormatter())', 'pass',
           [M + 'test_plots_say_which_candidate_and_their_units']),
    # ---- data: point clouds, noise, batches -------------------------------------------------------------------------
    Mutant('fps_first_points', 'points', 'keep = furthest_point_sample(torch.from_numpy(surface)[None], n_points)[0].numpy()',
           'keep = np.arange(n_points)', [D + 'test_sample_point_cloud', D + 'test_sample_point_cloud_is_fps_of_the_surface_samples'],
           named=True, why='furthest point sampling replaced by the first surface points in sample_point_cloud'),
    Mutant('fps_max_not_min', 'points', 'torch.minimum(nearest, sq.view(B, N), out=nearest)',
           'torch.maximum(nearest, sq.view(B, N), out=nearest)', [D + 'test_fps_matches_bruteforce']),
    Mutant('fps_start_last', 'points', 'else torch.zeros(B, dtype=torch.long))', 'else torch.full((B,), N - 1, dtype=torch.long))',
           [D + 'test_fps_start_and_generator']),
    Mutant('normalize_half_scale', 'points', 'out.apply_scale(2.0 / (hi - lo).max())', 'out.apply_scale(1.0 / (hi - lo).max())',
           [D + 'test_sample_point_cloud']),
    Mutant('normalize_vertex_mean', 'points', 'out.apply_translation(-(lo + hi) / 2)', 'out.apply_translation(-mesh.vertices.mean(0))',
           [D + 'test_sample_point_cloud', D + 'test_sample_point_cloud_is_fps_of_the_surface_samples']),
    Mutant('sample_seed_ignored', 'points', 'trimesh.sample.sample_surface(unit, n_surface, seed=seed)',
           'trimesh.sample.sample_surface(unit, n_surface, seed=0)', [D + 'test_sample_point_cloud']),
    Mutant('noise_p_inverted', 'points', 'noisy = torch.rand(points.shape[0], generator=generator) < p',
           'noisy = torch.rand(points.shape[0], generator=generator) >= p', [D + 'test_noise_and_quantisation']),
    Mutant('quantize_scale', 'points', 'np.rint((np.clip(points, -1, 1) + 1) * 127.5)', 'np.rint((np.clip(points, -1, 1) + 1) * 127)',
           [D + 'test_noise_and_quantisation']),
    Mutant('label_on_start', 'dataset', 'labels[P + 1:] = ids[P + 1:]', 'labels[P:] = ids[P:]', [D + 'test_collator_layout']),
    # ---- trainer (trainer, run_parts, speed, checkpoints): schedule, clipping, RNG, data order, weighting -----------
    Mutant('lr_floor_ignored', 'run_parts', 'min_lr_rate=cfg.min_lr_ratio)', 'min_lr_rate=0.0)', _LR, named=True,
           why="the cosine schedule's floor ignored"),
    Mutant('warmup_halved', 'run_parts', 'num_warmup_steps=cfg.warmup_steps,', 'num_warmup_steps=cfg.warmup_steps // 2,', _LR,
           named=True, why='the warm-up halved'),
    Mutant('clip_coef_one', 'speed', 'return (max_norm / (grad_norm + 1e-6)).clamp(max=1.0)', 'return torch.ones_like(grad_norm)',
           _CLIP, named=True, why='clipping made a no-op (clip coefficient always 1)'),
    Mutant('rng_not_restored', 'trainer', "    set_rng_state(state['rng'])\n", "    pass   # global RNG state not restored\n",
           [T + 'test_resume_is_exact', T + 'test_global_generators_on_resume'], named=True,
           why='global RNG state not restored on resume'),
    Mutant('peak_matmul_global_rng', 'checkpoints', 'g = torch.Generator(device).manual_seed(0)', 'g = None',
           [T + 'test_resume_is_exact', T + 'test_global_generators_on_resume']),
    Mutant('fused_clip_dropped', 'speed', 'if max_norm: optimizer.grad_scale = clip_coef(grad_norm, max_norm).reciprocal()',
           'pass', _CLIP),
    Mutant('clip_coef_unclamped', 'speed', 'return (max_norm / (grad_norm + 1e-6)).clamp(max=1.0)',
           'return max_norm / (grad_norm + 1e-6)', _CLIP),
    Mutant('projector_lr_ignored', 'run_parts', "lr=(projector_lr or lr) if part == 'projector' else lr)", 'lr=lr)', _LR),
    Mutant('decay_on_everything', 'run_parts', 'decay = p.ndim >= 2', 'decay = True', [T + 'test_schedule_is_the_closed_form']),
    Mutant('epochs_repeat_order', 'run_parts', 'np.random.default_rng([self.seed, epoch])', 'np.random.default_rng([self.seed, 0])',
           [T + 'test_resume_is_exact', T + 'test_streams_of_samples_and_noise']),
    Mutant('data_order_restarts', 'trainer', 'idx = run.sampler.micro_batches(it, cfg.batch_size',
           'idx = run.sampler.micro_batches(it - run.resumed_at, cfg.batch_size', [T + 'test_resume_is_exact']),
    Mutant('noise_ignores_step', 'run_parts', 'np.random.SeedSequence([seed, step, rank, micro])',
           'np.random.SeedSequence([seed, rank, micro])', [T + 'test_resume_is_exact', T + 'test_streams_of_samples_and_noise']),
    Mutant('mean_of_micro_means', 'trainer', 'share = (counts[k, 0] * dinfo.world_size / n_label).float()',
           'share = torch.tensor(1.0 / len(micro))', [T + 'test_resume_is_exact', T + 'test_accumulation_weights_every_label_token_alike']),
    Mutant('logged_loss_unweighted', 'trainer', 'loss_sum += loss.detach().double() * counts[k, 0].item()',
           'loss_sum += loss.detach().double() * counts[:, 0].mean().item()',
           [T + 'test_resume_is_exact', T + 'test_accumulation_weights_every_label_token_alike']),
    Mutant('val_mean_of_means', 'run_parts', 'tot += torch.tensor([loss.double().item() * k, k]', 'tot += torch.tensor([loss.double().item(), 1]',
           [T + 'test_resume_is_exact', T + 'test_validation_loss_is_token_weighted']),
    Mutant('val_on_raw_weights', 'trainer', 'vl = validation_loss(weights,', 'vl = validation_loss(run.model,',
           [T + 'test_resume_is_exact', T + 'test_validation_uses_the_ema_weights']),
    Mutant('nonfinite_not_skipped', 'speed', 'optimizer.found_inf = skip.float()', 'optimizer.found_inf = torch.zeros_like(skip.float())',
           [T + 'test_nonfinite_steps_are_skipped_then_stop']),
    Mutant('streak_never_reset', 'run_parts', "if not skipped: counter['streak'] = 0; return True", 'if not skipped: return True',
           [T + 'test_nonfinite_steps_are_skipped_then_stop', T + 'test_count_skip_streak']),
    Mutant('resume_key_lr_dropped', 'checkpoints', "'noise_std', 'batch_size', 'lr',", "'noise_std', 'batch_size',",
           [T + 'test_mismatched_config_is_refused']),
    # ---- trainer: the features of issues 16/17 (schedule past its end, early stopping, export, step times) ----------
    Mutant('schedule_floor_not_held', 'run_parts', 'lambda s, f=f: f(min(s, end))', 'lambda s, f=f: f(s)',
           [T + 'test_training_longer_is_the_planned_run']),
    Mutant('early_stop_ignores_min_delta', 'trainer', 'if gain is None or gain > cfg.early_stop_min_delta:',
           'if gain is None or gain > 0:', [T + 'test_early_stopping_stops_finishes_and_resumes_stopped']),
    Mutant('export_best_exports_last', 'trainer', "if cfg.export == 'best' and best.exists(): state = checkpoint_weights(load_checkpoint(best))",
           "if cfg.export == 'best' and best.exists(): state = None", [T + 'test_export_best_writes_the_weights_of_best_pt']),
]


def copy_repo(dest:Path) -> Path:
    "Tracked files and untracked, not ignored ones (new tests) into `dest`; no wheels, no virtual environment."
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    n = 0
    for rel in filter(None, out.split('\0')):
        src = ROOT / rel
        if not src.is_file() or rel.endswith('.whl'): continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, dest / rel); n += 1
    print(f'copied {n} files of {ROOT} into {dest}')
    return dest


def env_for(copy:Path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep),
                OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'), PYTHONDONTWRITEBYTECODE='1')


def check_import(copy:Path):
    "The copy's library is the one imported (not the editable install of the original checkout)."
    out = subprocess.run([sys.executable, '-c', 'import cadrecode_nb; print(cadrecode_nb.__file__)'], cwd=copy, env=env_for(copy),
                         capture_output=True, text=True, check=True).stdout.strip()
    print(f'cadrecode_nb imported from {out}')
    if not Path(out).resolve().is_relative_to(copy.resolve()): raise SystemExit(f'the copy is not the imported library: {out}')


def run_tests(copy:Path, tests:list, timeout:int) -> tuple[int, list, float, str]:
    "pytest on `tests` in the copy: (return code, failed node ids, seconds, output tail)."
    t0 = time.time()
    cmd = [sys.executable, '-m', 'pytest', '-q', '-rfE', '-p', 'no:cacheprovider', '-W', 'ignore', *tests]
    try: p = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired: return -1, ['(timeout)'], time.time() - t0, ''
    out = p.stdout + p.stderr
    failed = sorted(set(re.findall(r'^(?:FAILED|ERROR) (\S+)', out, re.M)))
    return p.returncode, failed, time.time() - t0, out[-3000:]


def apply(copy:Path, m:Mutant) -> tuple[Path, str]:
    "Write the mutant into the copy's exported module; return the file and its original text."
    path = copy / 'cadrecode_nb' / f'{m.module}.py'
    text = path.read_text()
    n = text.count(m.old)
    if n != 1: raise SystemExit(f'mutant {m.name}: the text to replace occurs {n} times in {path.name} (must be once):\n{m.old!r}')
    path.write_text(text.replace(m.old, m.new))
    return path, text


def notebook_of(copy:Path, module:str) -> Path:
    head = (copy / 'cadrecode_nb' / f'{module}.py').read_text().split('\n')[:5]
    nb = next(re.search(r'File to edit: \.\./(nbs/\S+\.ipynb)', l).group(1) for l in head if 'File to edit' in l)
    return copy / nb


def run_notebook(copy:Path, m:Mutant, timeout:int) -> tuple[str, float, str]:
    "The mutant written into the source notebook of the copy, then nbdev_test on that notebook."
    path = notebook_of(copy, m.module)
    raw = path.read_text(); nb = json.loads(raw)
    hits = [c for c in nb['cells'] if m.old in ''.join(c['source'])]
    if len(hits) != 1 or ''.join(hits[0]['source']).count(m.old) != 1:
        raise SystemExit(f'mutant {m.name}: the text must occur once in {path.name}')
    src = ''.join(hits[0]['source']).replace(m.old, m.new)
    hits[0]['source'] = src.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1))
    try: return nbdev_test(copy, path, timeout)
    finally: path.write_text(raw)


def nbdev_test(copy:Path, path:Path, timeout:int) -> tuple[str, float, str]:
    "nbdev_test on one notebook of the copy: ('killed' or 'SURVIVED', seconds, the last line of the error)."
    t0 = time.time()
    try:
        p = subprocess.run(['nbdev_test', '--path', str(path.relative_to(copy))], cwd=copy, env=env_for(copy),
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired: return 'timeout', time.time() - t0, ''
    lines = (p.stdout + p.stderr).splitlines()
    cell = next((m.group(1) for l in lines if (m := re.search(r'While Executing Cell #(\d+)', l))), '?')
    where = [lines[i + 1].strip() for i, l in enumerate(lines[:-1]) if '<ipython-input-' in l]   # the failing source line
    error = next((l.split(':')[0] for l in reversed(lines) if re.match(r'\w*(Error|Exception)\b', l)), '')
    why = f'cell #{cell}: {error} at `{where[-1][:70]}`' if where else ''
    return ('killed' if p.returncode else 'SURVIVED'), time.time() - t0, why


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', nargs='*', help='mutant names to run (default: all)')
    ap.add_argument('--list', action='store_true', help='list the mutants and exit')
    ap.add_argument('--notebooks', action='store_true', help="also run the notebook's own tests on the six named bugs")
    ap.add_argument('--timeout', type=int, default=900, help='seconds per pytest run')
    a = ap.parse_args()
    chosen = [m for m in MUTANTS if not a.only or m.name in a.only]
    if a.only and len(chosen) != len(a.only): raise SystemExit(f'unknown mutant(s): {set(a.only) - {m.name for m in MUTANTS}}')
    if a.list:
        for m in chosen: print(f"{m.name:30} {m.module:8} {'named ' if m.named else ''}{' '.join(t.split('::')[1] for t in m.tests)}")
        return
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix='cadrecode_mutants_') as tmp:
        copy = copy_repo(Path(tmp) / 'repo')
        check_import(copy)
        for m in chosen:   # every replacement must be found before anything runs
            path = copy / 'cadrecode_nb' / f'{m.module}.py'
            if path.read_text().count(m.old) != 1: raise SystemExit(f'mutant {m.name}: text not found exactly once in {path.name}')
        tests = list(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, failed, secs, out = run_tests(copy, tests, a.timeout)
        print(f'unchanged library: {len(tests)} tests, rc {rc}, {secs:.0f} s')
        if rc != 0: print(out); raise SystemExit('the selected tests do not pass on the unchanged copy: fix that first')
        rows = []
        for i, m in enumerate(chosen, 1):
            path, original = apply(copy, m)
            try: rc, failed, secs, out = run_tests(copy, m.tests, a.timeout)
            finally: path.write_text(original)
            status = 'killed' if rc != 0 else 'SURVIVED'
            if rc not in (0, 1): status += f' (pytest rc {rc})'
            new_only = all(_mark(f) for f in failed)
            rows.append((m, status, failed, secs, new_only))
            print(f'[{i:2}/{len(chosen)}] {m.name:30} {status:9} {secs:5.0f} s  {", ".join(f.split("::")[1] for f in failed)}',
                  flush=True)
        nb_rows = []
        if a.notebooks:
            named = [m for m in chosen if m.named]
            for nb in dict.fromkeys(notebook_of(copy, m.module) for m in named):   # unchanged notebooks must pass first
                res, secs, err = nbdev_test(copy, nb, a.timeout)
                print(f'unchanged notebook {nb.name}: {"passes" if res == "SURVIVED" else "FAILS " + err} ({secs:.0f} s)')
                if res != 'SURVIVED': raise SystemExit(f'{nb.name} fails without any mutant: fix that first')
            for m in named:
                res, secs, err = run_notebook(copy, m, a.timeout)
                nb_rows.append((m, res, secs, err)); print(f'notebook {m.name:30} {res} {secs:.0f} s  {err}', flush=True)
    print_table(rows, nb_rows, time.time() - t_start)
    if any(s.startswith('SURVIVED') for _, s, *_ in rows): sys.exit(1)


# the tests that existed before issue 22 (so the table can say whether only a new test caught a mutant)
_OLD_TESTS = {
    'test_score_item_picks_by_input_and_never_an_invalid_candidate', 'test_cd_shifted_cube_matches_brute_force',
    'test_normalizations', 'test_iou_self_disjoint_and_analytic', 'test_invalidity_ratio_and_best_index',
    'test_sample_point_cloud', 'test_fps_matches_bruteforce', 'test_fps_start_and_generator', 'test_noise_and_quantisation',
    'test_collator_layout', 'test_resume_is_exact', 'test_nonfinite_steps_are_skipped_then_stop',
    'test_mismatched_config_is_refused'}
_EXTENDED = {'test_resume_is_exact', 'test_noise_and_quantisation'}   # old tests given new assertions for issue 22


def _mark(node:str) -> str:
    "'*' for a test added for issue 22, '+' for an old one extended for it, '' for an old one as it was."
    name = node.split('::')[1].split('[')[0]
    return '+' if name in _EXTENDED else '' if name in _OLD_TESTS else '*'


def print_table(rows, nb_rows, total):
    print('\n' + f"{'mutant':30} {'module':8} {'result':9} {'s':>4}  failing tests (* added, + extended for issue 22)")
    print('-' * 118)
    for m, status, failed, secs, new_only in rows:
        names = ', '.join(_mark(f) + f.split('::')[1] for f in failed)
        print(f"{m.name + (' [issue 22]' if m.named else ''):30} {m.module:8} {status:9} {secs:4.0f}  {names}")
    k = sum(s.startswith('killed') for _, s, *_ in rows)
    only_new = sum(s.startswith('killed') and new_only for _, s, _, _, new_only in rows)
    print('-' * 118)
    print(f'{k}/{len(rows)} killed ({only_new} of them only by tests added or extended for issue 22); '
          f'{len(rows) - k} survived; total {total / 60:.1f} min')
    for m, res, secs, err in nb_rows: print(f'notebook {notebook_of_name(m):11} {m.name:20} {res:8} {secs:3.0f} s  {err}')


def notebook_of_name(m:Mutant) -> str:
    return {'eval': '04_eval', 'metrics': '04a_metrics', 'points': '00c_points', 'dataset': '00d_dataset', 'trainer': '03_trainer',
            'checkpoints': '03a_checkpoints', 'speed': '03b_speed', 'run_parts': '03c_run_parts'}[m.module]


if __name__ == '__main__': main()
