"""runtimes.images / runtimes.preprocess: parity with transformers' CLIP image processor.

The reference is ``CLIPImageProcessorPil``: what ``CLIPImageProcessor`` (and
AutoImageProcessor / CLIPProcessor) resolve to in transformers 5 when torchvision is not
installed, as here. Parity is exact (max abs diff 0.0) on every case below except the
crop-window path for extreme aspect ratios, which is held to 3 grey levels.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from mmdeploy.errors import BundleError, InputError
from mmdeploy.runtimes import preprocess as pp
from mmdeploy.runtimes.images import decode_image_data, load_image
from mmdeploy.runtimes.preprocess import ImagePreprocessor

skdata = pytest.importorskip("skimage.data")
transformers = pytest.importorskip("transformers")

TOL = 1e-5  # stated tolerance; the achieved figure is 0.0
WINDOW_TOL = 3 / 255 / 0.26130258 + 1e-6  # 3 grey levels after normalization

CONFIGS = {
    "clip-b32": {},  # CLIP defaults: shortest_edge 224, bicubic, crop 224
    "clip-l14-336": {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
    "square-bilinear": {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 2},
    "int-sizes-lanczos": {
        "size": 256,
        "crop_size": 224,
        "resample": 1,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    },
    "crop-bigger-than-resize": {"size": {"shortest_edge": 200}, "crop_size": {"height": 300, "width": 250}},
}


def hf_processor(cfg: dict):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**cfg)


def hf_pixels(cfg: dict, image) -> np.ndarray:
    return hf_processor(cfg)(image, return_tensors="np")["pixel_values"]


def _photos() -> dict[str, Image.Image]:
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera"]
    return {n: Image.fromarray(getattr(skdata, n)()) for n in names}


def _odd() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    a = skdata.astronaut()[::2, ::2]
    rgba = Image.fromarray(np.dstack([a, rng.integers(0, 256, a.shape[:2], dtype=np.uint8)]))
    p = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE)
    p_trans = p.copy()
    p_trans.info["transparency"] = 0
    return {
        "rgba": rgba,
        "la": rgba.convert("LA"),
        "pa": rgba.convert("PA"),
        "p": p,
        "p-transparency": p_trans,
        "cmyk": Image.fromarray(a).convert("CMYK"),
        "1-bit": Image.fromarray(skdata.camera()).convert("1"),
        "ycbcr": Image.fromarray(a).convert("YCbCr"),
        "tiny-1x1": Image.fromarray(np.array([[[200, 10, 30]]], np.uint8)),
        "tiny-3x2": Image.fromarray(rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)),
        "wide-2000x10": Image.fromarray(rng.integers(0, 256, (10, 2000, 3), dtype=np.uint8)),
        "tall-9x700": Image.fromarray(rng.integers(0, 256, (700, 9, 3), dtype=np.uint8)),
    }


PHOTOS = _photos()
ODD = _odd()


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_parity_photos(cfg_name):
    cfg = CONFIGS[cfg_name]
    ours = ImagePreprocessor.from_config(cfg)
    images = list(PHOTOS.values())
    got = ours(images)
    ref = np.concatenate([hf_pixels(cfg, im) for im in images])
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= TOL


@pytest.mark.parametrize("name", list(ODD))
@pytest.mark.parametrize("cfg_name", ["clip-b32", "crop-bigger-than-resize"])
def test_parity_odd_images(name, cfg_name):
    cfg = CONFIGS[cfg_name]
    im = ODD[name]
    got = ImagePreprocessor.from_config(cfg)([im])
    ref = hf_pixels(cfg, im)  # HF gets the raw mode: its own alpha/palette/CMYK handling
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= TOL


def test_parity_rgba_and_gray_arrays():
    rng = np.random.default_rng(1)
    rgba = np.dstack([skdata.coffee()[:300:3, :400:3], rng.integers(0, 256, (100, 134), dtype=np.uint8)])
    gray = skdata.camera()[::4, ::3, None]  # HF wants a channel axis; 2-D works here too
    for arr in (rgba, gray, skdata.chelsea()):
        got = ImagePreprocessor()([arr])
        ref = hf_pixels({}, arr)
        assert float(np.abs(got - ref).max()) <= TOL


def test_exif_orientation_applied(tmp_path):
    src = Image.fromarray(skdata.chelsea())  # 451 wide x 300 high
    exif = src.getexif()
    exif[0x0112] = 6  # rotate 90 CW when shown
    path = tmp_path / "rotated.jpg"
    src.save(path, "JPEG", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (300, 451) and loaded.mode == "RGB"
    got = ImagePreprocessor()([path])
    with Image.open(path) as raw:
        ref = hf_pixels({}, ImageOps.exif_transpose(raw))
    assert float(np.abs(got - ref).max()) <= TOL


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(2)
    arr16 = (rng.integers(0, 65536, (60, 80))).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(arr16).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    loaded = np.asarray(load_image(path))
    expect = (arr16 >> 8).astype(np.uint8)
    assert np.array_equal(loaded, np.dstack([expect] * 3))
    got = ImagePreprocessor()([path])
    ref = hf_pixels({}, Image.fromarray(expect))
    assert float(np.abs(got - ref).max()) <= TOL


def test_float_and_int32_modes():
    f = Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64))
    assert f.mode == "F"
    out = np.asarray(load_image(f))[..., 0]
    assert out.min() == 0 and out.max() == 255
    i32 = Image.fromarray((np.arange(48 * 64, dtype=np.int32) * 20).reshape(48, 64))
    assert i32.mode == "I"
    out = np.asarray(load_image(i32))[..., 0]
    assert out.max() == (48 * 64 - 1) * 20 >> 8


def test_window_path_for_extreme_aspect(monkeypatch):
    """Very long strips resample only the crop window: within 3 grey levels of HF."""
    monkeypatch.setattr(pp, "_FULL_RESIZE_LIMIT", 0)
    ours = ImagePreprocessor()
    for arr in (skdata.astronaut()[:, :20], skdata.coffee()[:12], skdata.camera()[::3, :40]):
        im = Image.fromarray(np.ascontiguousarray(arr))
        assert float(np.abs(ours([im]) - hf_pixels({}, im)).max()) <= WINDOW_TOL


def test_very_long_strip_is_bounded():
    # 224 x (224 * 40000) would be 6 GB if resized in full; the window path makes it cheap.
    im = Image.fromarray(np.full((1, 40000, 3), 128, np.uint8))
    out = ImagePreprocessor()([im])
    assert out.shape == (1, 3, 224, 224)


def test_config_round_trip_and_defaults():
    p = ImagePreprocessor.from_config(CONFIGS["int-sizes-lanczos"])
    assert p.size == {"shortest_edge": 256} and p.crop_size == {"height": 224, "width": 224}
    cfg = p.to_config()
    assert ImagePreprocessor.from_config(cfg).to_config() == cfg
    assert hf_processor(cfg)(PHOTOS["coffee"], return_tensors="np")["pixel_values"].shape == (1, 3, 224, 224)
    d = ImagePreprocessor().to_config()
    ref = hf_processor({}).to_dict()
    for key in ("size", "crop_size", "do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize"):
        assert d[key] == ref[key], key
    assert d["resample"] == int(ref["resample"])
    assert np.allclose(d["image_mean"], ref["image_mean"]) and np.allclose(d["image_std"], ref["image_std"])
    assert ImagePreprocessor().output_size == (224, 224)


def test_load_image_inputs_agree(tmp_path):
    arr = skdata.rocket()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    data = buf.getvalue()
    (tmp_path / "r.png").write_bytes(data)
    b64 = base64.b64encode(data).decode()
    for src in (
        arr,
        Image.fromarray(arr),
        data,
        tmp_path / "r.png",
        str(tmp_path / "r.png"),
        "data:image/png;base64," + b64,
    ):
        im = load_image(src)
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), arr)
    assert np.array_equal(np.asarray(decode_image_data(b64)), arr)
    assert np.array_equal(np.asarray(decode_image_data("data:image/png;base64," + b64[:76] + "\n" + b64[76:])), arr)


# -- errors ---------------------------------------------------------------------------------


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buf, "PNG")
    return buf.getvalue()


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputError, match="not found") as e:
        load_image(missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


def test_corrupt_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(InputError) as e:
        load_image(garbage)
    assert str(garbage) in str(e.value)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png_bytes()[:5000])
    with pytest.raises(InputError) as e:
        ImagePreprocessor()([truncated])
    assert str(truncated) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="bytes"):
        load_image(b"\x89PNG\r\n\x1a\n broken")


def test_bad_base64():
    b64 = base64.b64encode(_png_bytes()).decode()
    with pytest.raises(InputError, match="base64"):
        decode_image_data(b64[:1001])  # cut mid-quantum: bad padding
    with pytest.raises(InputError, match="image"):
        decode_image_data(b64[:4000])  # decodes, but to a truncated PNG
    with pytest.raises(InputError, match="base64"):
        decode_image_data("data:image/png;base64,@@@@")
    with pytest.raises(InputError, match="media type"):
        decode_image_data("data:text/plain;base64," + b64)
    with pytest.raises(InputError, match="base64"):
        decode_image_data("data:image/png," + b64)
    with pytest.raises(InputError):
        decode_image_data(123)  # type: ignore[arg-type]


def test_too_many_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    with pytest.raises(InputError, match="image too large") as e:
        load_image(path, max_pixels=5_000_000)
    assert str(path) in str(e.value)
    with pytest.raises(InputError, match="image too large"):
        ImagePreprocessor(max_pixels=1_000_000)([np.zeros((2000, 1000, 3), np.uint8)])
    assert load_image(path, max_pixels=None).size == (3000, 2000)


def test_decompression_bomb_is_input_error(monkeypatch):
    data = _png_bytes()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="image too large"):
        load_image(data, max_pixels=None)


def test_bad_batches_and_arrays():
    p = ImagePreprocessor()
    with pytest.raises(InputError, match="no images"):
        p([])
    with pytest.raises(InputError, match="list"):
        p(PHOTOS["coffee"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InputError, match="dtype|uint8"):
        load_image(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(InputError, match="unsupported image input"):
        load_image(12345)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="different sizes"):
        ImagePreprocessor(do_center_crop=False)([PHOTOS["coffee"], PHOTOS["camera"]])


def test_runtimes_do_not_import_torch_or_transformers():
    code = (
        "import sys, mmdeploy.runtimes.images, mmdeploy.runtimes.preprocess, mmdeploy.runtimes.tokenize;"
        "bad = [m for m in ('torch', 'transformers', 'mmdeploy.exporter') if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_legacy_openai_config_via_auto_image_processor(tmp_path):
    """openai/clip-vit-base-patch32's preprocessor_config.json (int sizes), loaded both ways."""
    from transformers import AutoImageProcessor

    cfg = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    hf = AutoImageProcessor.from_pretrained(str(tmp_path))
    ours = ImagePreprocessor.from_file(tmp_path / "preprocessor_config.json")
    assert ours.size == {"shortest_edge": 224} and ours.crop_size == {"height": 224, "width": 224}
    images = [PHOTOS["rocket"], ODD["rgba"], ODD["p-transparency"]]
    ref = np.concatenate([hf(im, return_tensors="np")["pixel_values"] for im in images])
    assert float(np.abs(ours(images) - ref).max()) <= TOL


@pytest.mark.parametrize(
    "cfg,field",
    [
        ({"size": {"shortest_edge": 0}}, "size values must be positive"),
        ({"size": -3}, "size must be positive"),
        ({"size": "big"}, "size must be"),
        ({"size": {"height": "a", "width": 3}}, "size values must be integers"),
        ({"crop_size": {"height": 224}}, "crop_size needs both"),
        ({"resample": 99}, "resample code 99"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must have 3"),
        ({"image_std": [0, 1, 1]}, "image_std must not contain 0"),
        ({"rescale_factor": [1]}, "rescale_factor must be a number"),
    ],
)
def test_bad_config_is_a_bundle_error_naming_the_source_and_field(tmp_path, cfg, field):
    with pytest.raises(BundleError, match=f"^manifest preprocess.config: .*{field}"):
        ImagePreprocessor.from_config(cfg, source="manifest preprocess.config")
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="preprocessor_config.json: ") as exc:
        ImagePreprocessor.from_file(path)
    assert len(str(exc.value).splitlines()) == 1
