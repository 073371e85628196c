"""The manifest schema, checked when a bundle is opened: one BundleError naming the first bad field.

Declared here as data (no pydantic / jsonschema: the device runtime stays small), and checked
beyond types where a hostile manifest could do harm: every path is relative, normalised and
inside the bundle; every file an artifact opens is listed in `files` (so it is hashed before
use); artifacts name components the bundle has. Unknown keys are allowed (a family's own
blocks, newer optional fields); missing or mistyped known ones are not.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable
from typing import Any

from ..errors import BundleError
from .session import PRECISIONS

Check = Callable[[Any, str], None]  # raises _Bad with the field path


class _Bad(Exception):
    def __init__(self, where: str, why: str):
        super().__init__(f"{where}: {why}")


def _type(t, name: str) -> Check:
    def check(v, where):
        if not isinstance(v, t) or isinstance(v, bool):
            raise _Bad(where, f"must be {name}, got {type(v).__name__} {_short(v)}")

    return check


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


STR = _type(str, "a string")
DICT = _type(dict, "an object")
LIST = _type(list, "a list")


def INT(v, where):
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(where, f"must be an integer, got {type(v).__name__} {_short(v)}")


def _at_least(n: int, most: int | None = None) -> Check:
    def check(v, where):
        INT(v, where)
        if v < n or (most is not None and v > most):
            raise _Bad(where, f"must be >= {n}" + (f" and <= {most}" if most is not None else "") + f", got {v}")

    return check


def NUMBER(v, where):
    """A finite number: NaN or inf in a scale would turn every score into NaN without a word."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Bad(where, f"must be a finite number, got {type(v).__name__} {_short(v)}")


def BOOL(v, where):
    if not isinstance(v, bool):
        raise _Bad(where, f"must be true or false, got {type(v).__name__} {_short(v)}")


def SHA256(v, where):
    STR(v, where)
    if not re.fullmatch(r"[0-9a-f]{64}", v):
        raise _Bad(where, f"must be a sha256 hex digest, got {_short(v)}")


def REL_PATH(v, where):
    """A path inside the bundle: relative, '/'-separated, normalised, no '..' or drive."""
    STR(v, where)
    bad = (
        not v
        or v.startswith(("/", "\\"))
        or "\\" in v
        or "\x00" in v
        or re.match(r"^[A-Za-z]:", v)
        or posixpath.normpath(v) != v
        or v.split("/")[0] == ".."
        or v == "."
    )
    if bad:
        raise _Bad(where, f"must be a relative path inside the bundle, got {_short(v)}")


def one_of(*choices) -> Check:
    def check(v, where):
        if v not in choices:
            raise _Bad(where, f"must be one of {', '.join(map(str, choices))}, got {_short(v)}")

    return check


def obj(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    def check(v, where):
        DICT(v, where)
        for k, c in required.items():
            if k not in v:
                raise _Bad(f"{where}.{k}", "is missing")
            c(v[k], f"{where}.{k}")
        for k, c in (optional or {}).items():
            if k in v:
                c(v[k], f"{where}.{k}")

    return check


def list_of(item: Check, nonempty: bool = False) -> Check:
    def check(v, where):
        LIST(v, where)
        if nonempty and not v:
            raise _Bad(where, "must not be empty")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")

    return check


def map_of(key: Check, value: Check, nonempty: bool = False) -> Check:
    def check(v, where):
        DICT(v, where)
        if nonempty and not v:
            raise _Bad(where, "must not be empty")
        for k, x in v.items():
            key(k, f"{where} key {k!r}")
            value(x, f"{where}[{k!r}]")

    return check


def DIM(v, where):
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _Bad(where, f"must be a size or a symbolic name, got {_short(v)}")


def bounded(lo: float, hi: float) -> Check:
    """A finite number in [lo, hi]: a 1e308 scale is finite and still turns every score into NaN."""

    def check(v, where):
        NUMBER(v, where)
        if not lo <= v <= hi:
            raise _Bad(where, f"must be between {lo:g} and {hi:g}, got {_short(v)}")

    return check


def either(*checks: Check) -> Check:
    def check(v, where):
        errors = []
        for c in checks:
            try:
                return c(v, where)
            except _Bad as exc:
                errors.append(str(exc).split(": ", 1)[1])
        raise _Bad(where, " or ".join(errors))

    return check


def BACKEND_NAME(v, where):
    from .backends import backend_names  # asked when checked: a backend registered later is known

    one_of(*backend_names())(v, where)


TENSOR = obj({"name": STR, "dtype": STR, "shape": list_of(DIM)})
ARTIFACT = obj(
    {
        "component": STR,
        "backend": BACKEND_NAME,
        "precision": one_of(*PRECISIONS),
        "path": REL_PATH,
        "files": list_of(REL_PATH, nonempty=True),
    },
    {
        "runtime": DICT,
        "built_for": DICT,
        "parity": DICT,
        "recipe": DICT,
        "gate": obj({}, {"passed": BOOL, "min_cosine": NUMBER, "agreement": NUMBER, "min_agreement": NUMBER}),
    },
)
TOKEN_ID = _at_least(0, (1 << 31) - 1)  # int32 in every graph that takes ids
SHARE = bounded(0, 1)
# `mmdeploy compress` (exporter/compress.py): every candidate of the search, the Pareto front, the pick
COMPRESS_CANDIDATE = obj(
    {
        "id": STR,
        "student": STR,
        "backend": BACKEND_NAME,
        "precision": one_of(*PRECISIONS),
        "top1": SHARE,
        "drop_points": bounded(-100, 100),
        "ms": bounded(0, 1e9),
        "mb": bounded(0, 1e9),
        "gate_passed": BOOL,
        "passed": BOOL,
        "on_front": BOOL,
        "made": obj({"by": STR, "depth": SHARE, "width": SHARE}),
    },
    {"ms_by_component": map_of(STR, NUMBER), "why_not": STR, "bundle": STR},
)
COMPRESS = obj(
    {
        "max_drop": bounded(0, 100),
        "baseline": obj({"candidate": STR, "top1": SHARE}),
        "candidates": list_of(COMPRESS_CANDIDATE, nonempty=True),
        "front": list_of(STR, nonempty=True),
        "chosen": STR,
        "default": obj({"backend": BACKEND_NAME, "precision": one_of(*PRECISIONS)}),
        "machine": STR,
    },
    {"budget_ms": bounded(0, 1e9), "space": DICT, "machine_load": DICT, "seconds": NUMBER, "cache": STR},
)
MANIFEST_SCHEMA = obj(
    {
        "schema_version": INT,
        "family": STR,
        "files": map_of(REL_PATH, obj({"sha256": SHA256, "bytes": _at_least(0)}), nonempty=True),
        "components": map_of(
            STR,
            obj({"inputs": list_of(TENSOR), "outputs": list_of(TENSOR, nonempty=True)}, {"onnx": REL_PATH}),
            nonempty=True,
        ),
        "artifacts": list_of(ARTIFACT),
    },
    {
        "model": STR,
        "target": STR,
        "tokenizer": obj(
            {"file": REL_PATH, "max_length": _at_least(1, 1 << 20)},
            {"pad_id": TOKEN_ID, "padding": one_of("longest", "max_length")},
        ),
        "preprocess": obj({"file": REL_PATH, "config": DICT}),
        "compress": COMPRESS,
        # export's stages (exporter/stages.py): wall time and the peak RSS when each ended
        "exporter": obj(
            {},
            {
                "stages": list_of(
                    obj({"name": STR, "seconds": NUMBER, "peak_rss_mb": NUMBER}, {"children_peak_rss_mb": NUMBER})
                )
            },
        ),
        # a family's own blocks are required and checked by its pipeline (manifest_blocks)
    },
)
SCALE = bounded(-1e4, 1e4)  # CLIP clamps exp(logit_scale) at 100; SigLIP's bias is around -10
POSITIONS = _at_least(1, 1 << 20)
# the decoder facts and generation settings of encoder + decoder-step families (caption, VQA)
DECODER_INFO = obj(
    {
        "num_layers": _at_least(1, 1024),
        "num_heads": _at_least(1, 4096),
        "head_dim": _at_least(1, 65536),
        "vocab_size": _at_least(1, (1 << 31) - 1),
        "cross_attention": BOOL,
        "encoder_outputs": list_of(STR, nonempty=True),
    },
    {"architecture": STR, "special_ids": list_of(TOKEN_ID), "max_question_tokens": POSITIONS},
)
GENERATION = obj(
    {"start_ids": list_of(TOKEN_ID, nonempty=True)},
    {
        "eos_token_id": either(TOKEN_ID, list_of(TOKEN_ID)),
        "pad_token_id": TOKEN_ID,
        "max_length": POSITIONS,
        "max_new_tokens": POSITIONS,
        "default_new_tokens": POSITIONS,
        "max_positions": POSITIONS,
        "min_length": _at_least(0, 1 << 20),
        "num_beams": _at_least(1, 16),
        "length_penalty": bounded(-100, 100),
        "early_stopping": either(BOOL, one_of("never")),
        "no_repeat_ngram_size": _at_least(0, 1024),
        "repetition_penalty": bounded(0.01, 100),
    },
)


def validate_manifest(manifest: Any, source: str) -> None:
    """Raise BundleError("<source>: <field>: <why>") for the first field that is wrong."""
    try:
        MANIFEST_SCHEMA(manifest, "manifest")
        _cross_check(manifest)
        _family_blocks(manifest)
    except _Bad as exc:
        raise BundleError(f"{source}: {exc}") from None


def _family_blocks(m: dict) -> None:
    """The blocks a family's pipeline reads (its `manifest_blocks`, required) and its own
    cross-checks (`manifest_cross`); a family without a pipeline here is left to load() to refuse."""
    from .pipelines import pipelines  # lazy: pipelines import this module

    cls = pipelines().get(m["family"])
    if cls is None:
        return
    obj(cls.manifest_blocks)(m, "manifest")
    if (cross := cls.manifest_cross) is not None:
        cross(m)


def check_decoder_blocks(info_key: str) -> Callable[[dict], None]:
    """Cross-checks of a decoder family: its layer count matches the decoder graph's past inputs,
    the encoder outputs exist, and every id the loop feeds is inside the vocabulary."""

    def cross(m: dict) -> None:
        info, gen = m[info_key], m["generation"]
        inputs = {i["name"] for i in m["components"].get("decoder", {}).get("inputs", [])}
        if inputs and any(f"past.{i}.key" not in inputs for i in range(info["num_layers"])):
            raise _Bad(
                f"manifest.{info_key}.num_layers",
                f"{info['num_layers']} layers, but the decoder takes "
                f"{sum(n.endswith('.key') and n.startswith('past.') for n in inputs)}",
            )
        outs = {o["name"] for c in m["components"].values() for o in c["outputs"]}
        if missing := [o for o in info["encoder_outputs"] if o not in outs]:
            raise _Bad(f"manifest.{info_key}.encoder_outputs", f"{missing[0]!r} is no component's output")
        eos = gen.get("eos_token_id", [])
        for name, ids in (
            ("start_ids", gen["start_ids"]),
            ("eos_token_id", eos if isinstance(eos, list) else [eos]),
            ("pad_token_id", [gen.get("pad_token_id", 0)]),
        ):
            if bad := [i for i in ids if i >= info["vocab_size"]]:
                raise _Bad(
                    f"manifest.generation.{name}", f"id {bad[0]} is outside the vocabulary ({info['vocab_size']})"
                )

    return cross


def _cross_check(m: dict) -> None:
    files = m["files"]
    for i, a in enumerate(m["artifacts"]):
        where = f"manifest.artifacts[{i}]"
        if a["component"] not in m["components"]:
            raise _Bad(
                f"{where}.component",
                f"{a['component']!r} is not one of the bundle's components ({', '.join(m['components'])})",
            )
        if a["path"] not in a["files"]:
            raise _Bad(f"{where}.path", f"{a['path']!r} is not in the artifact's own files")
        for j, rel in enumerate(a["files"]):
            if rel not in files:
                raise _Bad(f"{where}.files[{j}]", f"{rel!r} is not listed (with its sha256) in manifest.files")
    if "compress" in m:
        _compress_cross(m)
    for block in ("tokenizer", "preprocess"):
        rel = m.get(block, {}).get("file")
        if rel is not None and rel not in files:
            raise _Bad(f"manifest.{block}.file", f"{rel!r} is not listed (with its sha256) in manifest.files")


def _compress_cross(m: dict) -> None:
    """The front and the pick name candidates of the record; the default is the pick's variant and
    one this bundle has for every component."""
    c = m["compress"]
    ids = {r["id"] for r in c["candidates"]}
    for i, cid in enumerate(c["front"]):
        if cid not in ids:
            raise _Bad(f"manifest.compress.front[{i}]", f"{cid!r} is not one of the candidates")
    if c["chosen"] not in ids:
        raise _Bad("manifest.compress.chosen", f"{c['chosen']!r} is not one of the candidates")
    row = next(r for r in c["candidates"] if r["id"] == c["chosen"])
    want = (c["default"]["backend"], c["default"]["precision"])
    if (row["backend"], row["precision"]) != want:
        raise _Bad("manifest.compress.default", f"{'/'.join(want)} is not the chosen candidate's variant")
    have = {a["component"] for a in m["artifacts"] if (a["backend"], a["precision"]) == want}
    if have != set(m["components"]):
        raise _Bad("manifest.compress.default", f"the bundle has no {'/'.join(want)} for every component")
