"""Device-side runtime: bundles, backends, pipelines. Never imports torch.

from mmdeploy.runtimes import load
clip = load("out/clip", backend="onnxruntime")
clip.embed_images([...]); clip.embed_texts([...]); clip.classify(image, labels)
"""

from __future__ import annotations

from .bundle import Artifact, Bundle
from .select import load, open_session, select_variant

__all__ = ["Artifact", "Bundle", "load", "open_session", "select_variant"]
