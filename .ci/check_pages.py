"""Check the rendered docs site (`_docs/`, made by `nbdev_docs`) against the notebooks it comes from.

Three things, for every notebook page:
1. each visible code cell that should show something (it prints, displays or plots, or ends in a bare value) holds
   an output in the committed notebook: a notebook saved without running it fails here;
2. the page shows at least the figures and outputs the notebook holds in the cells a reader sees;
3. across the site, every relative link and image resolves to a file of the site.
Prints one line per page (figures and outputs: notebook -> page) and exits 1 naming every shortfall.

    nbdev_docs && python .ci/check_pages.py
"""
from __future__ import annotations
import ast, configparser, json, re, sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
NBS, DOCS = ROOT / 'nbs', ROOT / '_docs'
DIRECTIVE = re.compile(r'^#\|\s*([\w-]+:?)\s*(.*)$')
HIDDEN = {'hide', 'include:false', 'output:false'}
SHOWS = re.compile(r'\b(print|display|plt\.(?!close)\w+|plot_\w+|show_\w+|imshow|scatter|hist)\s*\(|\.plot\(')


def _tst_flags() -> set[str]:
    cfg = configparser.ConfigParser(interpolation=None); cfg.read(ROOT / 'settings.ini')
    return set(cfg.get('DEFAULT', 'tst_flags', fallback='').split())


def directives(source: str) -> dict[str, str]:
    return {m[1].replace(' ', ''): m[2].replace(' ', '').lower() for l in source.splitlines() if (m := DIRECTIVE.match(l))}


def visible(d: dict) -> bool:
    return not ({'hide'} & d.keys() or d.get('include:') == 'false' or d.get('output:') == 'false')


def should_show(source: str, d: dict, flags: set[str]) -> bool:
    "Whether a code cell that runs in the tests is expected to show an output (a heuristic that errs towards no)."
    if d.get('eval:') == 'false' or flags & d.keys() or not visible(d) or d.keys() & {'export', 'exporti'}: return False
    code = '\n'.join(l for l in source.splitlines() if not l.lstrip().startswith(('#', '%', '!')))
    if code.rstrip().endswith(';'): return False
    try: tree = ast.parse(code)
    except SyntaxError: return False
    body = [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))]
    if not body: return False
    if isinstance(body[-1], ast.Expr) and not isinstance(body[-1].value, ast.Call): return True   # a bare value
    calls = {ast.unparse(n.func) for s in body for n in ast.walk(s) if isinstance(n, ast.Call)}
    if 'plt.close' in calls: calls &= {'print', 'display'}   # its figures are made and closed: only text shows
    return any(SHOWS.match(c + '(') for c in calls)


def notebook_outputs(nb_path: Path, flags: set[str]) -> tuple[int, int, list[str]]:
    "(figures, outputs, cells expected to show something that hold nothing) of the cells a reader sees."
    figures = outputs = 0; missing = []
    for i, cell in enumerate(json.loads(nb_path.read_text())['cells']):
        if cell['cell_type'] != 'code': continue
        source = ''.join(cell['source']); d = directives(source)
        outs = cell.get('outputs', [])
        if should_show(source, d, flags) and not outs: missing.append(f"cell {i} ({source.strip().splitlines()[-1][:60]!r})")
        if not visible(d): continue
        outputs += len(outs)
        figures += sum('image/png' in o.get('data', {}) or 'image/svg+xml' in o.get('data', {}) for o in outs)
    return figures, outputs, missing


class _Page(HTMLParser):
    "Figures and outputs shown in cell outputs, and the relative links and images of one rendered page."
    def __init__(self):
        super().__init__(); self.figures = self.outputs = 0; self.refs: list[str] = []; self._divs: list[str] = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs); cls = (a.get('class') or '').split()
        if tag in ('div', 'section'):   # a markdown output that starts with a heading is a section
            self._divs.append(' '.join(cls))
            if 'cell-output' in cls: self.outputs += 1
        if tag == 'img':
            if any('cell-output' in c for c in self._divs): self.figures += 1
            if a.get('src'): self.refs.append(a['src'])
        if tag == 'a' and a.get('href'): self.refs.append(a['href'])
    def handle_endtag(self, tag):
        if tag in ('div', 'section') and self._divs: self._divs.pop()


def parse(page: Path) -> _Page:
    p = _Page(); p.feed(page.read_text(errors='replace')); return p


def broken_refs(page: Path, refs: list[str]) -> list[str]:
    "Relative links and images of `page` that point at no file of the site."
    bad = []
    for ref in refs:
        u = urlparse(ref)
        if u.scheme or u.netloc or ref.startswith(('#', 'mailto:', 'javascript:')) or not u.path: continue
        target = (page.parent / unquote(u.path)).resolve()
        if target.is_dir(): target = target / 'index.html'
        if not target.exists(): bad.append(ref)
    return bad


def page_of(nb: Path) -> Path:
    return DOCS / (re.sub(r'^\d+[a-z]?_', '', nb.stem) + '.html')   # nbdev drops the number: 01_projector -> projector


def main() -> int:
    if not DOCS.exists(): print(f"{DOCS} does not exist: run nbdev_docs first"); return 1
    problems, flags = [], _tst_flags()
    for nb in sorted(NBS.glob('*.ipynb')):
        page = page_of(nb)
        if not page.exists(): problems.append(f"{nb.name}: no page {page.relative_to(ROOT)}"); continue
        want_fig, want_out, missing = notebook_outputs(nb, flags)
        got = parse(page)
        print(f"{page.name:22} figures {want_fig:3} -> {got.figures:3}   outputs {want_out:3} -> {got.outputs:3}   ({nb.name})")
        problems += [f"{nb.name}: {m} should show something and holds no output (run .ci/execute_notebooks.py)" for m in missing]
        if got.figures < want_fig: problems.append(f"{page.name}: {got.figures} figures shown, the notebook holds {want_fig}")
        if got.outputs < want_out: problems.append(f"{page.name}: {got.outputs} outputs shown, the notebook holds {want_out}")
    for page in sorted(DOCS.rglob('*.html')):
        for ref in broken_refs(page, parse(page).refs): problems.append(f"{page.relative_to(DOCS)}: broken link or image {ref}")
    for p in problems: print('PROBLEM', p)
    print('pages check:', 'ok' if not problems else f'{len(problems)} problem(s)')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
