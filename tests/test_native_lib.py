"""mmdeploy.runtimes.native_lib (the C library through ctypes) against the Python runtime: the same
vectors, scores and captions, errors as the matching mmdeploy classes, one handle shared by 8
Python threads, one C ABI program under valgrind, and the two CLIs' caption / vqa --json diffed.

Uses test_native.py's build fixture (runtimes/native/build.sh); skips, saying why, without it."""

from __future__ import annotations

import json
import subprocess
import threading

import numpy as np
import pytest

from mmdeploy.errors import BackendError, BundleError, CapabilityError, InputError

from . import test_native as tn
from .test_native import GENERATE_PICKS, REPO, _backends, _python_captions, cosine, mmrt, sanitized

# test_native.py's fixtures (the build, the exported bundles, the odd images), shared by name
native_build, native_bundle, native_clip, images = tn.native_build, tn.native_bundle, tn.native_clip, tn.images

pytestmark = pytest.mark.slow  # the native build and the exports of test_native.py

TEXTS = ["a red circle", "a small blue square on the left", "two green triangles", "x"]
LABELS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def native_lib(native_build):
    """The module, pointed at the build under test (MMRT_BUILD_DIR honoured)."""
    if sanitized():
        pytest.skip("the ASan-built library cannot be loaded into an unsanitized Python (ASan must come first)")
    from mmdeploy.runtimes import native_lib

    lib = native_build / "libmmdeploy_runtime.so"
    if not lib.is_file():
        pytest.skip(f"{lib} not built (runtimes/native/build.sh)")
    native_lib.load_library(lib)
    return lambda bundle, **kw: native_lib.NativeModel(bundle, library=lib, **kw)


def _has_openvino(model_factory, bundle) -> bool:
    try:
        model_factory(bundle, backend="openvino", precision="fp32").close()
        return True
    except BackendError:  # no openvino wheel, or a build without its headers
        return False


def test_ctypes_clip_equals_python(native_lib, native_clip, images):
    """embed_images / embed_texts cosine >= 0.999999, classify within 1e-5 of the Python runtime."""
    from mmdeploy.runtimes import load

    paths = [str(p) for p in images if p.name in GENERATE_PICKS]
    pipe = load(native_clip, backend="onnxruntime", precision="fp32", threads=2)
    with native_lib(native_clip, backend="onnxruntime", precision="fp32", threads=2) as m:
        assert m.info()["variant"] == "onnxruntime/fp32"
        for got, want in (
            (m.embed_images(paths), pipe.embed_images(paths)),
            (m.embed_texts(TEXTS), pipe.embed_texts(TEXTS)),
        ):
            assert got.shape == np.asarray(want).shape
            assert min(cosine(g, w) for g, w in zip(got, want)) >= 0.999999
        # encoded bytes and decoded pixels give the path's vector
        raw = images[0].read_bytes()
        from PIL import Image

        pixels = np.asarray(Image.open(images[0]).convert("RGB"))
        by_kind = m.embed_images([str(images[0]), raw, pixels])
        assert np.array_equal(by_kind[0], by_kind[1]) and cosine(by_kind[0], by_kind[2]) >= 0.999999
        for p in paths[:4]:
            want = dict(pipe.classify(p, LABELS, template="a photo of {}"))
            got = m.classify(p, LABELS, "a photo of {}")
            assert np.abs(got - np.array([want[lab] for lab in LABELS])).max() <= 1e-5


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_ctypes_captions_equal_python(native_lib, shapes_bundle, images, backend):
    """caption-shapes through ctypes: the Python runtime's ids and captions, greedy and beam 3."""
    if backend == "openvino" and not _has_openvino(native_lib, shapes_bundle):
        pytest.skip("no OpenVINO in this native build or Python (the openvino wheel's C API)")
    paths = [str(p) for p in images if p.name in GENERATE_PICKS]
    with native_lib(shapes_bundle, backend=backend, precision="fp32", threads=2) as m:
        for beams in (1, 3):
            want_ids, want_texts = _python_captions(shapes_bundle, backend, paths, beams)
            assert m.caption_ids(paths, num_beams=beams) == (want_ids, want_texts), beams


def test_ctypes_errors_are_mmdeploy_errors(native_lib, native_clip, shapes_bundle, vqa_shapes_bundle, images, tmp_path):
    """Each status raises its errors.py class with the library's one-line message (mmrt's too)."""
    from mmdeploy.runtimes import native_lib as module

    def raises(cls, call, *words):
        with pytest.raises(cls) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
        return msg

    missing = tmp_path / "missing"
    msg = raises(BundleError, lambda: native_lib(missing), "bundle not found", str(missing))
    assert msg in mmrt("info", missing, check=False).stderr  # the message mmrt prints for the same fault
    raises(BundleError, lambda: native_lib(native_clip, backend="tensorrt", precision="fp32"), "no tensorrt/fp32")
    raises(InputError, lambda: native_lib(native_clip, backend="nosuchbackend"), "unknown backend")
    nope = tmp_path / "libonnxruntime.so"
    raises(BackendError, lambda: native_lib(native_clip, backend="onnxruntime", ort_library=nope), str(nope))
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # the CPU wheel: a status, no abort
        raises(
            BackendError,
            lambda: native_lib(native_clip, device="cuda"),
            "no CUDA execution provider",
            "onnxruntime-gpu",
        )
    raises(InputError, lambda: native_lib(native_clip, device="warp-drive"), "unknown device")
    cut = tmp_path / "cut.jpg"
    jpg = next(p for p in images if p.suffix == ".jpg")
    cut.write_bytes(jpg.read_bytes()[:200])
    with native_lib(native_clip, backend="onnxruntime", precision="fp32") as m:
        raises(InputError, lambda: m.embed_images([cut]), "cut.jpg")
        raises(InputError, lambda: m.embed_texts([]))
        raises(InputError, lambda: m.classify(images[0], ["a", " "]), "label")
        raises(InputError, lambda: m.embed_images([np.zeros((4, 4, 2), np.uint8)]), "uint8")
        raises(CapabilityError, lambda: m.caption([images[0]]), "caption bundle", "clip")
    with native_lib(shapes_bundle, backend="onnxruntime", precision="fp32") as m:
        raises(CapabilityError, lambda: m.embed_texts(["a"]), "caption")
        raises(InputError, lambda: m.caption([images[0]], max_new_tokens=5000), "positions")
    with native_lib(vqa_shapes_bundle, backend="onnxruntime", precision="fp32") as m:
        raises(InputError, lambda: m.vqa(images[:2], ["a?", "b?", "c?"]), "2 images and 3 questions")
    raises(BackendError, lambda: module.load_library(tmp_path / "nope.so"), "nope.so")
    # nothing given and nothing built: the one line names the build script
    keep = module.BUILT_LIBRARY
    try:
        module.BUILT_LIBRARY = tmp_path / "build" / "libmmdeploy_runtime.so"
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv(module.LIBRARY_ENV, raising=False)
            raises(BackendError, module.library_path, "not built", "runtimes/native/build.sh")
    finally:
        module.BUILT_LIBRARY = keep


def test_one_handle_eight_python_threads_equals_serial(native_lib, native_bundle, shapes_bundle, images):
    """8 Python threads (ctypes drops the GIL) share one clip handle and one caption handle, mixing
    embed images / texts, classify, caption greedy and beam 3: every result equals the serial one,
    bit for bit, on each backend this build has."""
    clip = native_bundle("clip-shapes", ("onnxruntime", "openvino"))
    paths = [str(p) for p in images if p.name in GENERATE_PICKS[:4]]
    backends = [b for b in _backends() if b == "onnxruntime" or _has_openvino(native_lib, clip)]
    for backend in backends:
        opts = {"backend": backend, "precision": "fp32", "threads": 1}
        with native_lib(clip, **opts) as enc, native_lib(shapes_bundle, **opts) as cap:
            calls = [
                lambda: enc.embed_images(paths),
                lambda: enc.embed_texts(TEXTS),
                lambda: enc.classify(paths[0], LABELS, "a photo of {}"),
                lambda: cap.caption_ids(paths[:2], max_new_tokens=8, num_beams=1),
                lambda: cap.caption_ids(paths[1:3], max_new_tokens=8, num_beams=3),
            ]
            serial = [call() for call in calls]
            mismatches, failures = [], []

            def worker(k: int) -> None:
                try:
                    for r in range(3):
                        for j in range(len(calls)):
                            i = (j + k + r) % len(calls)  # each thread starts elsewhere in the mix
                            got, want = calls[i](), serial[i]
                            same = np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want
                            if not same:
                                mismatches.append((k, i))
                except Exception as e:  # a failed call is a finding, not a crashed thread
                    failures.append(f"thread {k}: {type(e).__name__}: {e}")

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not failures, failures
            assert not mismatches, (backend, mismatches)


@pytest.mark.valgrind
def test_valgrind_c_api_hostile(native_build, native_clip, images):
    """c_api_hostile (the C ABI's error paths: NULLs, truncated images, too-small buffers) under
    valgrind: no invalid read or write, no definite leak (ONNX Runtime's own: valgrind.supp)."""
    if sanitized():
        pytest.skip("an ASan build does not run under valgrind")
    supp = REPO / "runtimes" / "native" / "tests" / "valgrind.supp"
    cmd = ["valgrind", "--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite"]
    cmd += [f"--suppressions={supp}", "-q", str(native_build / "c_api_hostile"), str(native_clip), str(images[0])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 failures" in r.stdout


def test_caption_and_vqa_json_equal_mmrt(native_build, shapes_bundle, vqa_shapes_bundle, images, cli_inprocess):
    """`mmdeploy caption/vqa --json` and `mmrt caption/vqa --json` on the same bundle print the same object."""
    paths = [str(p) for p in images if p.name in GENERATE_PICKS[:3]]
    variant = ["--backend", "onnxruntime", "--precision", "fp32", "--threads", "2"]
    cases = [
        ["caption", str(shapes_bundle), *paths, "--num-beams", "3", "--json", *variant],
        ["vqa", str(vqa_shapes_bundle), *paths, "-q", "what color is the shape?", "--json", *variant],
        ["vqa", str(vqa_shapes_bundle), paths[0], "-q", "what shape is it?", "-q", "is it big?", "--json", *variant],
    ]
    for args in cases:
        py = cli_inprocess(*args)
        assert py.returncode == 0, py.stderr
        want = json.loads(py.stdout)
        assert json.loads(mmrt(*args).stdout) == want, args
        key = "captions" if args[0] == "caption" else "answers"
        assert list(want) == [key] and all(
            set(row) == ({"path", "text"} if key == "captions" else {"path", "question", "answer"}) for row in want[key]
        )
