"""text-embedding family: a sentence-transformers style encoder (HF encoder + pooling + optional
L2 normalisation) as one graph, input_ids, attention_mask -> text_embeds, dynamic batch / sequence.

The sentence-transformers files of the checkpoint folder say how: ``modules.json`` (is there a
Normalize module?), the Pooling module's ``config.json`` (which pooling), and
``sentence_bert_config.json`` (``max_seq_length``, the truncation length). A plain HF
encoder folder without them gets mean pooling, no normalisation, max_length = the position table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import CheckpointError, require
from ...runtimes.tokenize import TextTokenizer
from ..checkpoint import Checkpoint, tokenizer_files, tokenizer_json
from ..prune import TextEmbeddingPruner
from . import register
from .base import Family

torch = require("torch", "export")

POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


class SentenceEncoder(torch.nn.Module):
    """input_ids, attention_mask -> pooled (and L2-normalised) embeddings, as SentenceTransformer.encode."""

    def __init__(self, model, pooling: str = "mean", normalize: bool = True):
        super().__init__()
        self.model, self.pooling, self.normalize = model, pooling, normalize

    def forward(self, input_ids, attention_mask):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        if self.pooling == "cls":
            out = h[:, 0]
        elif self.pooling == "max":
            out = h.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            out = (h * mask).sum(dim=1)
            count = mask.sum(dim=1).clamp(min=1e-9)
            out = out / (count.sqrt() if self.pooling == "mean_sqrt_len" else count)
        if self.normalize:
            out = torch.nn.functional.normalize(out, p=2.0, dim=1)
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def sentence_transformers_config(folder: Path | None, default_max_length: int) -> dict[str, Any]:
    """pooling, normalize and max_length from a sentence-transformers folder (defaults without one)."""
    cfg: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_length": default_max_length}
    if folder is None:
        return cfg
    modules_path = folder / "modules.json"
    pooling_dir = folder / "1_Pooling"
    if modules_path.is_file():
        modules = _read_json(modules_path)
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        unknown = [k for k in kinds if k not in SUPPORTED_MODULES]
        if unknown:
            raise CheckpointError(
                f"{modules_path}: sentence-transformers modules {unknown} are not supported yet "
                f"(supported: {', '.join(SUPPORTED_MODULES)})"
            )
        cfg["normalize"] = "Normalize" in kinds
        pooling_dir = next(
            (folder / m["path"] for m in modules if str(m.get("type", "")).endswith(".Pooling")), pooling_dir
        )
    if (pooling_dir / "config.json").is_file():
        pc = _read_json(pooling_dir / "config.json")
        if "pooling_mode" in pc:  # newer sentence-transformers spelling
            modes = [str(pc["pooling_mode"]).replace("mean_sqrt_len_tokens", "mean_sqrt_len")]
        else:
            modes = [name for key, name in POOLING_KEYS.items() if pc.get(key)]
            others = [k for k, v in pc.items() if k.startswith("pooling_mode_") and v and k not in POOLING_KEYS]
            modes += others
        if len(modes) != 1 or modes[0] not in POOLING_KEYS.values():
            raise CheckpointError(
                f"{pooling_dir / 'config.json'}: pooling {modes or 'none'} is not supported; "
                f"one of {', '.join(POOLING_KEYS.values())}"
            )
        cfg["pooling"] = modes[0]
    sb = folder / "sentence_bert_config.json"
    if sb.is_file():
        msl = _read_json(sb).get("max_seq_length")
        if msl:
            cfg["max_length"] = min(int(msl), default_max_length)
    return cfg


@register
class TextEmbeddingFamily(Family):
    family = "text-embedding"
    architectures = {"BertModel": ("AutoModel", "AutoConfig")}
    model_types = ("bert",)
    default_classes = ("AutoModel", "AutoConfig")
    capabilities = frozenset({Capability.EMBED_TEXTS, Capability.PRUNE})
    distiller = None
    pruner = TextEmbeddingPruner  # --mlp only (its embedding is the hidden state)
    components = ("text",)
    outputs = {"text": "text_embeds"}

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.model = ckpt.model
        cfg = self.model.config
        self.embed_dim = int(cfg.hidden_size)
        st = sentence_transformers_config(ckpt.files_dir, int(cfg.max_position_embeddings))
        self.pooling, self.normalize, self.max_length = st["pooling"], st["normalize"], st["max_length"]
        tok = self.tokenizer_file = tokenizer_json(ckpt)
        self.tokenizer = TextTokenizer.from_file(tok, max_length=self.max_length)

    def module(self, component: str):
        if component != "text":
            raise KeyError(component)
        return SentenceEncoder(self.model, self.pooling, self.normalize).eval()

    def input_names(self, component: str) -> list[str]:
        return ["input_ids", "attention_mask"]

    def dynamic_axes(self, component: str) -> dict[str, dict[int, str]]:
        return {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "text_embeds": {0: "batch"},
        }

    def specs(self, component: str) -> dict[str, list[dict[str, Any]]]:
        ins = [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
        ]
        out = [{"name": "text_embeds", "dtype": "float32", "shape": ["batch", self.embed_dim]}]
        return {"inputs": ins, "outputs": out}

    def export_feeds(self, component: str) -> dict[str, np.ndarray]:
        """Batch 2 with padding, so the attention mask is traced into the graph."""
        return self.tokenizer(["How do I reset my password?", "Thanks."])

    def feeds(self, component: str, batch: int, data=None) -> dict[str, np.ndarray]:
        """Real sentences for parity / bench (or a data set's texts)."""
        from ...common.datasets.sentences import sentence_batch

        texts = data.text_batch(batch) if data is not None else sentence_batch(batch)
        return self.tokenizer(texts)

    def manifest_extra(self) -> dict[str, Any]:
        return {
            "tokenizer": {
                "file": "tokenizer.json",
                "max_length": self.max_length,
                "pad_id": self.tokenizer.pad_id,
            },
            "text_embedding": {
                "pooling": self.pooling,
                "normalized": self.normalize,  # the graph's output is already L2-normalised
                "embed_dim": self.embed_dim,
                "max_seq_length": self.max_length,
            },
        }

    def bundle_files(self) -> list[tuple[Path, str]]:
        return tokenizer_files(self.tokenizer_file)
