"""The runtime half of a family: a pipeline declares its capabilities; the public method of a
capability it does not declare raises one CapabilityError naming the families that can.

Callers (cli, serve, jobs, bench) ask ``pipe.can(Capability.X)`` (or ``require``) before the
work, never ``getattr`` for a method."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ...common.capabilities import Capability, needs
from ...errors import CapabilityError

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..generate import GenerationConfig

# capability -> the public methods that make it (tests/test_families.py checks a pipeline
# declares a capability exactly when it defines them)
METHODS: dict[Capability, tuple[str, ...]] = {
    Capability.EMBED_IMAGES: ("embed_images", "embed_pixels"),
    Capability.EMBED_TEXTS: ("embed_texts",),
    Capability.CLASSIFY: ("classify", "scores"),
    Capability.CAPTION: ("caption",),
    Capability.ANSWER: ("answer",),
    Capability.CHAT: ("chat",),
}


class Pipeline:
    """Defaults every pipeline shares; a family's pipeline subclasses this (or a family's)."""

    family: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    task: ClassVar[str | None] = None  # bench's accuracy task (see the package docstring)
    generative: ClassVar[bool] = False
    # manifest blocks it reads (required when a bundle of the family is opened: runtimes/manifest.py)
    # and its own cross-checks of them
    manifest_blocks: ClassVar[dict[str, Any]] = {}
    manifest_cross: ClassVar[Callable[[dict], None] | None] = None
    # set by an opened pipeline; None on a bare one (a test's stand-in)
    bundle: Bundle | None = None
    preprocess: Any = None
    generation: GenerationConfig | None = None
    variant: str | None = None

    @classmethod
    def can(cls, capability: Capability) -> bool:
        return capability in cls.capabilities

    @classmethod
    def cannot(cls, capability: Capability, doing: str | None = None, where: Any = None) -> CapabilityError:
        """ "<where> is a <family> bundle: <doing> needs <what> (<families that can>)"."""
        from . import families_that

        name = cls.family or cls.__name__
        head = f"{where} is a {name} bundle" if where is not None else f"the {name} family"
        what = needs(capability, families_that(capability))
        return CapabilityError(f"{head}: {doing or capability.value} needs {what}")

    def require(self, capability: Capability, doing: str | None = None) -> None:
        """Raise CapabilityError (one line, exit 2 from the CLI) unless this pipeline can."""
        if not self.can(capability):
            raise self.cannot(capability, doing, self.bundle.root if self.bundle is not None else None)

    def _refuse(self, capability: Capability):
        self.require(capability)
        raise NotImplementedError(f"{type(self).__name__} declares {capability.value} but does not implement it")

    # -- the public methods of each capability; a family overrides those it declares --------
    def embed_images(self, images, batch_size: int = 32, normalize: bool = True):
        self._refuse(Capability.EMBED_IMAGES)

    def embed_pixels(self, pixel_values, normalize: bool = True):
        self._refuse(Capability.EMBED_IMAGES)

    def embed_texts(self, texts, batch_size: int = 64, normalize: bool = True):
        self._refuse(Capability.EMBED_TEXTS)

    def classify(self, image, labels, template: str = "{}"):
        self._refuse(Capability.CLASSIFY)

    def scores(self, image_embeds, text_embeds):
        self._refuse(Capability.CLASSIFY)

    def caption(self, images, max_new_tokens=None, num_beams=None, **kw):
        self._refuse(Capability.CAPTION)

    def answer(self, images, questions, max_new_tokens=None, num_beams=None, **kw):
        self._refuse(Capability.ANSWER)

    def chat(self, *args, **kw):
        self._refuse(Capability.CHAT)
