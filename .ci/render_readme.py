"""Render nbs/index.ipynb to README.md without the Quarto CLI (which `nbdev_readme` needs and this
machine cannot install). Markdown cells are copied, code cells become fenced blocks with their text
output; cells marked `#| hide` are left out. The docs workflow renders the same notebook with Quarto."""
from pathlib import Path
import json, re

root = Path(__file__).resolve().parent.parent
nb = json.loads((root/'nbs'/'index.ipynb').read_text())
directive = re.compile(r'^#\|\s*(.*)$')
parts = ['<!-- Rendered from nbs/index.ipynb by .ci/render_readme.py: edit the notebook, not this file. -->']
for cell in nb['cells']:
    src = ''.join(cell['source'])
    lines = src.splitlines()
    flags = {m.group(1).strip() for l in lines if (m := directive.match(l))}
    if 'hide' in flags: continue
    if cell['cell_type'] == 'markdown':   # images are relative to nbs/ in the notebook, to the root in README.md
        parts.append(re.sub(r'(!\[[^\]]*\]\()(?!https?://|/)', r'\1nbs/', src.strip()))
        continue
    code = '\n'.join(l for l in lines if not directive.match(l)).strip()
    if code and 'echo: false' not in flags: parts.append(f'```python\n{code}\n```')
    outs = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream': outs.append(''.join(o['text']))
        elif 'text/markdown' in o.get('data', {}): parts.append(''.join(o['data']['text/markdown']).strip())
        elif 'text/plain' in o.get('data', {}): outs.append(''.join(o['data']['text/plain']))
    if outs: parts.append('```\n' + ''.join(outs).rstrip() + '\n```')
(root/'README.md').write_text('\n\n'.join(parts) + '\n')
