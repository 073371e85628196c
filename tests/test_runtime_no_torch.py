"""A device app installs only the core: mmdeploy.runtimes must never pull torch in."""

from __future__ import annotations

import subprocess
import sys

from mmdeploy.benchmarks.datasets import shapes


def test_runtime_runs_without_torch(clip_bundle, tmp_path):
    img = tmp_path / "x.png"
    shapes.generate("test", 1)[0].image.save(img)
    code = f"""
import sys
sys.modules['torch'] = None          # any import of torch now fails loudly
sys.modules['transformers'] = None
from mmdeploy.runtimes import load
for backend in ('onnxruntime', 'openvino'):
    clip = load({str(clip_bundle)!r}, backend=backend, precision='fp32')
    e = clip.embed_images([{str(img)!r}]); t = clip.embed_texts(['a photo of a red circle'])
    assert e.shape[0] == 1 and t.shape[0] == 1
    print(backend, clip.classify({str(img)!r}, ['red circle', 'blue star'])[0][0])
bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'skimage') and sys.modules[m] is not None]
bad += [m for m in sys.modules if m.startswith('mmdeploy.exporter')]
assert not bad, bad
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
