"""Decoder export pieces the generative families share (caption, vqa, vlm): the KV-cache step
wrapper's base, flattening a transformers cache into graph outputs, BERT cross-attention K/V.

A helper module of this package, not a family: nothing here is registered."""

from __future__ import annotations

from ...errors import require

torch = require("torch", "export")

PARITY_IMAGES = 3  # real photos a decoder family's parity and end-to-end checks run on


def pairs(flat):
    """[k0, v0, k1, v1, ...] -> [(k0, v0), (k1, v1), ...]."""
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def flatten_cache(cache, n_layers: int) -> list:
    """A transformers cache -> [k0, v0, k1, v1, ...] (the graph's present.{i}.key|value outputs)."""
    out = []
    for i in range(n_layers):
        layer = cache.layers[i]
        out += [layer.keys, layer.values]
    return out


class StepBase(torch.nn.Module):
    """forward(input_ids, position_ids, *kv): kv = past k/v per layer [+ cross k/v per layer]."""

    def __init__(self, n_layers: int, cross: bool):
        super().__init__()
        self.n_layers, self.cross = n_layers, cross

    def split(self, kv):
        n = 2 * self.n_layers
        past = pairs(kv[:n])
        cross = pairs(kv[n : 2 * n]) if self.cross else None
        return past, cross

    def caches(self, kv):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        past, cross = self.split(kv)
        selfc = DynamicCache(past)
        if cross is None:
            return selfc
        return EncoderDecoderCache(selfc, DynamicCache(cross))


def bert_cross_kv(layers, h, heads: int, head_dim: int) -> tuple:
    """Every BERT decoder layer's cross-attention keys / values of ``h`` (B, heads, tokens, head_dim)."""
    out = []
    shape = (h.shape[0], h.shape[1], heads, head_dim)
    for layer in layers:
        att = layer.crossattention.self
        out += [att.key(h).reshape(shape).transpose(1, 2), att.value(h).reshape(shape).transpose(1, 2)]
    return tuple(out)
