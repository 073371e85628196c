"""What a family can do, declared once on each half of the family contract (the exporter class
and the pipeline class) so that callers ask ``can(Capability.CLASSIFY)`` instead of probing for
methods, and messages list the families that can from the registry instead of by hand."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class Capability(str, Enum):
    EMBED_IMAGES = "embed_images"
    EMBED_TEXTS = "embed_texts"
    CLASSIFY = "classify"  # zero-shot over labels: both encoders and the family's scoring rule
    CAPTION = "caption"
    ANSWER = "answer"  # visual question answering
    CHAT = "chat"  # multi-turn conversations about images
    DISTILL = "distill"  # exporter side: a distiller that trains a smaller student
    PRUNE = "prune"  # exporter side: a pruner (exporter/prune.py) that removes heads / MLP channels

    @property
    def needs(self) -> str:
        """What a command that asks this capability needs, for messages ("... needs <this> (families)")."""
        return _NEEDS[self]


_NEEDS = {
    Capability.EMBED_IMAGES: "a bundle with an image encoder",
    Capability.EMBED_TEXTS: "a bundle with a text encoder",
    Capability.CLASSIFY: "a dual-encoder bundle",
    Capability.CAPTION: "a captioning bundle",
    Capability.ANSWER: "a VQA bundle",
    Capability.CHAT: "a chat (VLM) bundle",
    Capability.DISTILL: "a family with a distiller",
    Capability.PRUNE: "a family with a pruner",
}


def names(families: Iterable[str]) -> str:
    """The family list of a message: 'a, b, c' (sorted), or 'none yet'."""
    return ", ".join(sorted(families)) or "none yet"


def needs(capability: Capability, families: Iterable[str]) -> str:
    """E.g. 'a bundle with an image encoder (align, clip, siglip)'."""
    return f"{capability.needs} ({names(families)})"
