"""A device app installs only the core: mmdeploy.runtimes must never pull torch in."""

from __future__ import annotations

from mmdeploy.common.datasets import shapes

from .conftest import run_without_torch


def test_runtime_runs_without_torch(clip_bundle, tmp_path):
    img = tmp_path / "x.png"
    shapes.generate("test", 1)[0].image.save(img)
    run_without_torch(
        f"""
from mmdeploy.runtimes import load
for backend in ('onnxruntime', 'openvino'):
    clip = load({str(clip_bundle)!r}, backend=backend, precision='fp32')
    e = clip.embed_images([{str(img)!r}]); t = clip.embed_texts(['a photo of a red circle'])
    assert e.shape[0] == 1 and t.shape[0] == 1
    print(backend, clip.classify({str(img)!r}, ['red circle', 'blue star'])[0][0])
from mmdeploy.jobs import run_job, search  # batch jobs and search are device-side too (pyarrow, numpy)
s = run_job({str(clip_bundle)!r}, {str(tmp_path / "emb")!r}, images=[{str(img)!r}], backend='onnxruntime',
            precision='fp32', progress=False)
assert s['rows'] == 1 and search({str(tmp_path / "emb")!r}, image={str(img)!r}, k=1)[0]['score'] > 0.9999
""",
        forbidden=("torch", "transformers", "skimage"),
    )
