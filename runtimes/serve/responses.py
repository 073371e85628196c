"""The bodies the server answers with, as plain dicts: no FastAPI here, so each shape can be read
(and tested) apart from the routes that send it.

OpenAI's objects: the embedding list, ``chat.completion`` and its ``chat.completion.chunk``
stream events, usage. mmdeploy's own: classification and caption lists, caption stream events,
the model list and ``/health``.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .state import ServerState

__all__ = [
    "answer_usage",
    "caption_delta",
    "caption_done",
    "caption_list",
    "chat_chunk",
    "chat_completion",
    "classification_list",
    "completion_head",
    "embedding_list",
    "health_report",
    "model_list",
    "usage_chunk",
]


# -- OpenAI-compatible -----------------------------------------------------------------------


def embedding_list(model: str, vecs: Sequence[np.ndarray], *, as_base64: bool, tokens: int, images: int) -> dict:
    """``/v1/embeddings``: float32 vectors as numbers (orjson writes numpy), or base64 of little-endian float32."""
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
            if as_base64
            else np.ascontiguousarray(v, np.float32),
        }
        for i, v in enumerate(vecs)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "images": images},
    }


def completion_head(model: str) -> dict[str, Any]:
    """The fields every object of one chat completion shares (the whole body and each chunk)."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}


def answer_usage(prompt_tokens: int, answer: Any, *, cached: bool = False) -> dict[str, Any]:
    """Usage of one answer; ``cached``: also how many prompt tokens a kept KV cache served."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": prompt_tokens + answer.completion_tokens,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": answer.cached_tokens}
    return usage


def chat_completion(head: dict[str, Any], answer: Any, usage: dict[str, Any]) -> dict:
    return {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": usage,
    }


def chat_chunk(head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict:
    return {
        **head,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(head: dict[str, Any], usage: dict[str, Any]) -> dict:
    """The last chunk when the client asked ``stream_options.include_usage``: no choices, the usage."""
    return {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}


def model_list(cards: Sequence[dict]) -> dict:
    return {"object": "list", "data": list(cards)}


# -- mmdeploy's own --------------------------------------------------------------------------


def classification_list(model: str, labels: Sequence[str], probs: np.ndarray) -> dict:
    """Each image's labels ranked by probability, best first."""
    data = []
    for i, p in enumerate(probs):
        ranked = sorted(zip(labels, map(float, p)), key=lambda t: -t[1])
        data.append(
            {
                "index": i,
                "label": ranked[0][0],
                "score": ranked[0][1],
                "scores": [{"label": label, "score": s} for label, s in ranked],
            }
        )
    return {"object": "list", "model": model, "data": data}


def caption_list(model: str, captions: Sequence[str]) -> dict:
    return {"object": "list", "model": model, "data": [{"index": i, "caption": c} for i, c in enumerate(captions)]}


def caption_delta(index: int, delta: str) -> dict:
    return {"index": index, "delta": delta}


def caption_done(index: int, caption: str) -> dict:
    return {"index": index, "caption": caption, "finish_reason": "stop"}


def health_report(srv: ServerState) -> tuple[dict, int]:
    """(body, status): 503 while draining, so a load balancer's probe stops sending work."""
    body = {
        "status": "draining" if srv.draining else "ok",
        "uptime_s": round(time.time() - srv.started, 1),
        "inflight": srv.inflight,
        "models": {
            n: {
                "family": m.family,
                "variant": m.variant,
                "capabilities": m.capabilities,
                "queue": {c: b.depth for c, b in m.batchers.items()},
            }
            for n, m in srv.models.items()
        },
    }
    return body, 503 if srv.draining else 200
