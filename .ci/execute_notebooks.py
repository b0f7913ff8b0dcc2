"""Execute notebooks top to bottom and save them with their outputs, as the docs site shows them.

The cells run exactly as `nbdev_test` runs them (same working folder, `IN_TEST=1`, the same CPU settings; cells
flagged with a `tst_flags` flag of settings.ini or `#| eval: false` are skipped and keep what they hold). Code cells
that run start empty, so an output that no longer appears does not linger. Run it after changing a notebook, then
`nbdev_clean`, and commit the notebook with its outputs:

    python .ci/execute_notebooks.py                      # every notebook in nbs/
    python .ci/execute_notebooks.py nbs/01_projector.ipynb
"""
from __future__ import annotations
import os, subprocess, sys, time
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.process import extract_directives

ROOT = Path(__file__).resolve().parent.parent


def skipped(cell, flags: set[str]) -> bool:
    "Whether `nbdev_test` would skip this cell: not code, `#| eval: false`, or a test flag of settings.ini."
    if cell.cell_type != 'code': return True
    directives = extract_directives(cell, remove=False)
    if directives.get('eval:', [''])[0].lower() == 'false': return True
    return bool(flags & directives.keys())


def execute(path: Path, flags: set[str]) -> float:
    "Run the notebook at `path` and write it back with its outputs; seconds taken."
    nb, start = read_nb(path), time.time()
    for cell in nb.cells:
        if not skipped(cell, flags): cell.outputs = []
    shell = CaptureShell(path)
    with working_directory(path.parent):
        try: shell.run_all(nb, exc_stop=True, preproc=lambda c: skipped(c, flags))
        except Exception:
            sys.stderr.write(shell.prettytb(fname=path) + '\n')
            raise SystemExit(f"{path}: a cell failed; the notebook was not written")
    write_nb(nb, path)
    return time.time() - start


def main(paths: list[str]) -> None:
    os.environ['IN_TEST'] = '1'
    cfg = get_config()
    flags = set(cfg.tst_flags.split())
    notebooks = [Path(p).resolve() for p in paths] or sorted(cfg.nbs_path.glob('*.ipynb'))
    if len(notebooks) == 1: print(f"{notebooks[0].relative_to(ROOT)}: {execute(notebooks[0], flags):.0f} s", flush=True)
    else:   # one fresh process per notebook, as nbdev_test does: no state carried from one to the next
        for nb in notebooks: subprocess.run([sys.executable, __file__, str(nb)], check=True)


if __name__ == '__main__':
    main(sys.argv[1:])
