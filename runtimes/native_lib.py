"""The native C runtime (runtimes/native, libmmdeploy_runtime.so) called from Python through ctypes.

A check path for tests and for users who want the C library's results from Python: the same bundle,
the same options (backend, precision, threads) as ``mmdeploy.runtimes.load``, numpy arrays and
strings back, and every failed call raised as the matching mmdeploy error with the library's
one-line message. Nothing else depends on it; it needs no build dependency (ctypes, numpy).

    from mmdeploy.runtimes.native_lib import NativeModel
    with NativeModel("out/clip", backend="onnxruntime", threads=2) as m:
        vectors = m.embed_images(["cat.jpg"])

The library is found from ``library=``, then ``$MMDEPLOY_NATIVE_LIB``, then the checkout's
build/native (what ``runtimes/native/build.sh`` writes). ctypes releases the GIL for each foreign
call, so one model used from several Python threads runs them concurrently (runtime.h lists the
calls that are thread safe: all of those offered here except close).
"""

from __future__ import annotations

import ctypes as C
import json
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import (
    BackendError,
    BundleError,
    CapabilityError,
    InputError,
    Interrupted,
    MMDeployError,
    ResourceError,
)

LIBRARY_ENV = "MMDEPLOY_NATIVE_LIB"
# build.sh's default output folder in a checkout (an editable install: the package root is the repo root)
BUILT_LIBRARY = Path(__file__).resolve().parents[1] / "build" / "native" / "libmmdeploy_runtime.so"

# runtime.h's mmrt_status -> the error class the Python runtime raises for the same fault
STATUS_ERRORS: dict[int, type[Exception]] = {
    1: InputError,  # INVALID_ARGUMENT: NULL, zero count, bad option value
    2: InputError,  # INPUT: an image or text that cannot be used
    3: BundleError,  # BUNDLE: missing / corrupt / tampered bundle
    4: BackendError,  # BACKEND: library missing or too old, session failed
    5: CapabilityError,  # UNSUPPORTED: the call does not fit the bundle's family
    6: InputError,  # BUFFER_TOO_SMALL (not reached here: results come through callbacks)
    7: ResourceError,  # OUT_OF_MEMORY
    8: BackendError,  # NOT_IMPLEMENTED: not in this build
    9: Interrupted,  # CANCELLED (reserved)
    10: RuntimeError,  # INTERNAL: a bug in the library, not a user error
}

_IMAGE_PIXELS, _IMAGE_ENCODED, _IMAGE_FILE = 0, 1, 2
_PIXEL_RGB8, _PIXEL_RGBA8, _PIXEL_GRAY8 = 0, 2, 4


class _OpenOptions(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("backend", C.c_char_p),
        ("precision", C.c_char_p),
        ("threads", C.c_int32),
        ("verify", C.c_int32),
        ("ort_library", C.c_char_p),
        ("device", C.c_char_p),  # since 0.2.0: read only as far as struct_size reaches
    ]


class _Image(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("kind", C.c_int),
        ("pixels", C.c_void_p),
        ("width", C.c_int32),
        ("height", C.c_int32),
        ("stride", C.c_size_t),
        ("format", C.c_int),
        ("data", C.c_void_p),
        ("size", C.c_size_t),
        ("path", C.c_char_p),
    ]


_TokenCallback = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_size_t, C.c_int64, C.c_char_p)
_ResultCallback = C.CFUNCTYPE(None, C.c_void_p, C.c_size_t, C.POINTER(C.c_int64), C.c_size_t, C.c_char_p)


class _GenerateOptions(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("max_new_tokens", C.c_int32),
        ("num_beams", C.c_int32),
        ("prompt", C.c_char_p),
        ("on_token", _TokenCallback),
        ("user", C.c_void_p),
        ("on_result", _ResultCallback),
    ]


_libraries: dict[str, C.CDLL] = {}
_load_lock = threading.Lock()


def library_path(library: str | os.PathLike | None = None) -> Path:
    """The library to load: the argument, $MMDEPLOY_NATIVE_LIB, or the checkout's build/native."""
    if library is not None or os.environ.get(LIBRARY_ENV):
        path = Path(library if library is not None else os.environ[LIBRARY_ENV])
        if not path.is_file():
            source = "library=" if library is not None else f"${LIBRARY_ENV}"
            raise BackendError(f"native runtime library not found: {path} (from {source})")
        return path
    if BUILT_LIBRARY.is_file():
        return BUILT_LIBRARY
    raise BackendError(
        f"the native runtime library is not built: run runtimes/native/build.sh (it writes {BUILT_LIBRARY}), "
        f"or set {LIBRARY_ENV} to a libmmdeploy_runtime.so"
    )


def load_library(library: str | os.PathLike | None = None) -> C.CDLL:
    """libmmdeploy_runtime with its C signatures declared (loaded once per path)."""
    path = str(library_path(library).resolve())
    with _load_lock:
        if path in _libraries:
            return _libraries[path]
        try:
            lib = C.CDLL(path)
        except OSError as e:
            raise BackendError(f"cannot load the native runtime library {path}: {e}") from None
        lib.mmrt_last_error.restype = C.c_char_p
        lib.mmrt_status_name.restype = C.c_char_p
        lib.mmrt_status_name.argtypes = [C.c_int]
        lib.mmrt_version.restype = C.c_char_p
        lib.mmrt_model_open.argtypes = [C.c_char_p, C.POINTER(_OpenOptions), C.POINTER(C.c_void_p)]
        lib.mmrt_model_close.argtypes = [C.c_void_p]
        lib.mmrt_model_close.restype = None
        lib.mmrt_model_info_json.argtypes = [C.c_void_p, C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)]
        lib.mmrt_model_embed_dim.argtypes = [C.c_void_p, C.POINTER(C.c_size_t)]
        lib.mmrt_embed_images.argtypes = [C.c_void_p, C.POINTER(_Image), C.c_size_t, C.c_void_p, C.c_size_t]
        lib.mmrt_embed_texts.argtypes = [C.c_void_p, C.POINTER(C.c_char_p), C.c_size_t, C.c_void_p, C.c_size_t]
        lib.mmrt_classify.argtypes = [
            *(C.c_void_p, C.POINTER(_Image), C.POINTER(C.c_char_p), C.c_size_t, C.c_char_p, C.c_void_p, C.c_size_t)
        ]
        gen = [C.POINTER(_GenerateOptions), C.POINTER(C.c_char_p), C.c_size_t]
        lib.mmrt_caption.argtypes = [C.c_void_p, C.POINTER(_Image), C.c_size_t, *gen]
        lib.mmrt_vqa.argtypes = [C.c_void_p, C.POINTER(_Image), C.POINTER(C.c_char_p), C.c_size_t, *gen]
        _libraries[path] = lib
        return lib


def _utf8(text: str, what: str) -> bytes:
    if "\0" in text:
        raise InputError(f"{what} contains a NUL character")
    return text.encode("utf-8")


def _texts(texts: list[str], what: str):
    encoded = [_utf8(t, f"{what} {i}") for i, t in enumerate(texts)]
    return (C.c_char_p * max(len(encoded), 1))(*encoded), encoded


ImageLike = str | os.PathLike | bytes | np.ndarray


def _images(images: list[ImageLike]):
    """mmrt_image array; returns it with the Python objects it points into (kept alive by the caller)."""
    arr = (_Image * max(len(images), 1))()
    keep: list = []
    for i, im in enumerate(images):
        s = arr[i]
        s.struct_size = C.sizeof(_Image)
        if isinstance(im, (str, os.PathLike)):
            path = _utf8(os.fspath(im), f"image {i} path")
            s.kind, s.path = _IMAGE_FILE, path
            keep.append(path)
        elif isinstance(im, bytes):
            buf = C.create_string_buffer(im, len(im))
            s.kind, s.data, s.size = _IMAGE_ENCODED, C.cast(buf, C.c_void_p), len(im)
            keep.append(buf)
        elif isinstance(im, np.ndarray):
            px = np.ascontiguousarray(im)
            fmt = _PIXEL_GRAY8 if px.ndim == 2 else {3: _PIXEL_RGB8, 4: _PIXEL_RGBA8}.get(px.shape[-1])
            if px.dtype != np.uint8 or px.ndim not in (2, 3) or fmt is None:
                raise InputError(
                    f"image {i}: pixels must be uint8 HxW, HxWx3 (RGB) or HxWx4 (RGBA), not {im.dtype} {im.shape}"
                )
            s.kind, s.format = _IMAGE_PIXELS, fmt
            s.pixels, s.height, s.width = px.ctypes.data, px.shape[0], px.shape[1]
            keep.append(px)
        else:
            raise InputError(f"image {i}: a path, encoded bytes or a uint8 numpy array, not {type(im).__name__}")
    return arr, keep


class NativeModel:
    """One bundle opened by the native library (mmrt_model). Thread safe except close()."""

    _handle: C.c_void_p | None = None  # set once mmrt_model_open succeeds; __del__ may run before

    def __init__(
        self,
        bundle: str | os.PathLike,
        backend: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        verify: bool = False,
        library: str | os.PathLike | None = None,
        ort_library: str | os.PathLike | None = None,
        device: str | None = None,
    ):
        """ort_library: libonnxruntime.so to use (None: $MMRT_ORT_LIBRARY, then the onnxruntime wheel's).
        device: cpu (default); cuda / tensorrt (an onnxruntime-gpu library: give it as ort_library);
        an OpenVINO device (GPU, NPU). One this library or machine lacks raises BackendError."""
        self._lib = load_library(library)
        opts = _OpenOptions()
        self._lib.mmrt_open_options_init(C.byref(opts))
        opts.backend = backend.encode() if backend else None
        opts.precision = precision.encode() if precision else None
        opts.threads = int(threads or 0)
        opts.verify = int(verify)
        opts.ort_library = _utf8(os.fspath(ort_library), "ort_library") if ort_library is not None else None
        opts.device = _utf8(device, "device") if device else None
        handle = C.c_void_p()
        self._check(self._lib.mmrt_model_open(_utf8(os.fspath(bundle), "bundle path"), C.byref(opts), C.byref(handle)))
        self._handle = handle
        dim = C.c_size_t()
        self._check(self._lib.mmrt_model_embed_dim(self._handle, C.byref(dim)))
        self.embed_dim = dim.value  # 0: a caption / vqa bundle

    # -- errors --------------------------------------------------------------------------------

    def _check(self, status: int) -> None:
        if status == 0:
            return
        message = (self._lib.mmrt_last_error() or b"").decode("utf-8", "replace")
        name = self._lib.mmrt_status_name(status).decode()
        error = STATUS_ERRORS.get(status, RuntimeError)
        raise error(message if issubclass(error, MMDeployError) else f"{name}: {message}")

    def _model(self) -> C.c_void_p:
        if self._handle is None:
            raise InputError("the native model is closed")
        return self._handle

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the model; must not race with another call on it."""
        if self._handle is not None:
            self._lib.mmrt_model_close(self._handle)
            self._handle = None

    def __enter__(self) -> NativeModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def info(self) -> dict:
        """The library's info JSON: family, variant, backend, precision, components, verified files."""
        needed = C.c_size_t()
        self._check(self._lib.mmrt_model_info_json(self._model(), None, 0, C.byref(needed)))
        buf = C.create_string_buffer(needed.value)
        self._check(self._lib.mmrt_model_info_json(self._model(), buf, needed.value, C.byref(needed)))
        return json.loads(buf.value.decode())

    # -- embeddings and classify ---------------------------------------------------------------

    def embed_images(self, images: list[ImageLike]) -> np.ndarray:
        """(len(images), embed_dim) float32, L2-normalised."""
        arr, _keep = _images(images)
        out = np.empty((len(images), self.embed_dim), np.float32)
        self._check(self._lib.mmrt_embed_images(self._model(), arr, len(images), out.ctypes.data, out.size))
        return out

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), embed_dim) float32, L2-normalised."""
        arr, _keep = _texts(texts, "text")
        out = np.empty((len(texts), self.embed_dim), np.float32)
        self._check(self._lib.mmrt_embed_texts(self._model(), arr, len(texts), out.ctypes.data, out.size))
        return out

    def classify(self, image: ImageLike, labels: list[str], template: str | None = None) -> np.ndarray:
        """Zero-shot scores, scores[i] for labels[i] (softmax for CLIP / ALIGN, sigmoid for SigLIP)."""
        arr, _keep = _images([image])
        names, _names = _texts(labels, "label")
        scores = np.empty(len(labels), np.float32)
        tmpl = _utf8(template, "template") if template is not None else None
        self._check(
            self._lib.mmrt_classify(self._model(), arr, names, len(labels), tmpl, scores.ctypes.data, scores.size)
        )
        return scores

    # -- generation ----------------------------------------------------------------------------

    def _generate(self, call, max_new_tokens, num_beams, prompt, n: int) -> tuple[list[list[int]], list[str]]:
        ids: list[list[int]] = [[] for _ in range(n)]
        texts = [""] * n

        def on_result(_user, index, id_ptr, count, text):
            ids[index] = id_ptr[:count]
            texts[index] = text.decode("utf-8", "replace")

        opts = _GenerateOptions()
        self._lib.mmrt_generate_options_init(C.byref(opts))
        opts.max_new_tokens = int(max_new_tokens or 0)
        opts.num_beams = int(num_beams or 0)
        opts.prompt = _utf8(prompt, "prompt") if prompt else None
        opts.on_result = callback = _ResultCallback(on_result)  # kept alive for the call
        self._check(call(C.byref(opts)))
        del callback
        return ids, texts

    def caption_ids(
        self, images: list[ImageLike], max_new_tokens=None, num_beams=None, prompt=None
    ) -> tuple[list[list[int]], list[str]]:
        """Token ids (as the Python runtime's generate_ids) and captions, one per image."""
        arr, _keep = _images(images)
        return self._generate(
            lambda opts: self._lib.mmrt_caption(self._model(), arr, len(images), opts, None, 0),
            max_new_tokens,
            num_beams,
            prompt,
            len(images),
        )

    def caption(self, images: list[ImageLike], max_new_tokens=None, num_beams=None, prompt=None) -> list[str]:
        """One caption per image (greedy: num_beams=1; None: the checkpoint's defaults)."""
        return self.caption_ids(images, max_new_tokens, num_beams, prompt)[1]

    def vqa_ids(
        self, images: list[ImageLike], questions: list[str], max_new_tokens=None, num_beams=None
    ) -> tuple[list[list[int]], list[str]]:
        """Ids and answers; one question for every image, one image for every question, or one each."""
        if len(questions) == 1 and len(images) > 1:
            questions = questions * len(images)
        elif len(images) == 1 and len(questions) > 1:
            images = images * len(questions)
        elif len(images) != len(questions):
            raise InputError(
                f"{len(images)} images and {len(questions)} questions: give one question per image, "
                "one question for all, or one image for all"
            )
        arr, _keep = _images(images)
        qs, _qs = _texts(questions, "question")
        return self._generate(
            lambda opts: self._lib.mmrt_vqa(self._model(), arr, qs, len(images), opts, None, 0),
            max_new_tokens,
            num_beams,
            None,
            len(images),
        )

    def vqa(self, images: list[ImageLike], questions: list[str], max_new_tokens=None, num_beams=None) -> list[str]:
        return self.vqa_ids(images, questions, max_new_tokens, num_beams)[1]
