"""Typed requests and responses of the HTTP API (pydantic), with this server's limits on them.

:func:`request_models` builds the request classes for one :class:`ServeConfig`, so the
limits a client reads in ``/docs`` (items per request, labels, beams, new tokens) are the
ones this server enforces. Validation is strict (``"8"`` is not an integer, ``true`` is
not one either) and :func:`validation_error` turns pydantic's error into the one API error
shape, naming the field as a client wrote it (``input[1]``, ``messages[0].content``).
Unknown fields are allowed: OpenAI clients send ``user`` and friends.

Response classes document the answers; routes render them with orjson directly (a
512-float embedding through pydantic would cost more than the model call).
"""

# no `from __future__ import annotations`: the request classes are built inside a function
# and pydantic resolves their annotations there

from types import SimpleNamespace
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ...errors import InputError
from ..scoring import check_template
from ..tokenize import bad_unicode_at
from .config import ServeConfig
from .errors import ApiError, json_type
from .inputs import FieldError, image_field

__all__ = ["request_models", "validation_error", "RESPONSE_MODELS"]


# -- shared field types -------------------------------------------------------------------


def _unicode(s: str) -> str:
    """JSON allows lone surrogates; the tokenizer does not: refuse them before they join a batch."""
    if (at := bad_unicode_at(s)) is not None:
        raise FieldError("invalid_text", f"not valid Unicode text (a lone surrogate at character {at})")
    return s


Text = Annotated[StrictStr, AfterValidator(_unicode)]


def _no_token_arrays(v: Any) -> Any:
    if isinstance(v, list) and v and all(isinstance(x, int) or isinstance(x, list) for x in v):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in v) or all(isinstance(x, list) for x in v):
            raise FieldError("invalid_type", "token arrays are not supported: send text, or images as data URLs")
    return v


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: StrictStr | None = Field(
        None, description="A served model's id (GET /v1/models); optional when one is served."
    )


# -- requests, per server config ----------------------------------------------------------------


def request_models(cfg: ServeConfig) -> SimpleNamespace:
    """The request classes with ``cfg``'s limits: ``.embeddings``, ``.classify``, ``.caption``."""
    allow = cfg.allow_local_paths
    Image = Annotated[
        StrictStr,
        AfterValidator(lambda s: image_field(s, allow)),
        Field(
            description="An image: a data URL (data:image/png;base64,...) or bare base64"
            + (", or a local path / file:// URL" if allow else "")
            + "."
        ),
    ]
    Images = Union[Image, Annotated[list[Image], Field(min_length=1, max_length=cfg.max_items)]]

    class _ImageRequest(_Request):
        image: Image | None = None
        images: Images | None = Field(None, description=f"Several images (at most {cfg.max_items}).")

        @model_validator(mode="after")
        def _one_of(self):
            if (self.image is None) == (self.images is None):
                raise PydanticCustomError(
                    "missing_image", "give either 'image' (one image) or 'images' (a list)", {"param": "image"}
                )
            return self

        @property
        def refs(self) -> list:
            if self.image is not None:
                return [self.image]
            return [self.images] if not isinstance(self.images, list) else list(self.images)

        @property
        def names(self) -> list[str]:
            """What each image is called in this request (for error messages)."""
            return (
                ["image"]
                if self.image is not None
                else (
                    [f"images[{i}]" for i in range(len(self.images))] if isinstance(self.images, list) else ["images"]
                )
            )

    class EmbeddingsRequest(_Request):
        """OpenAI embeddings: text, or images as data URLs / base64 (sniffed per input)."""

        input: Annotated[
            Text | Annotated[list[Text], Field(min_length=1, max_length=cfg.max_items)],
            BeforeValidator(_no_token_arrays),
            Field(description=f"A string or a list of at most {cfg.max_items}."),
        ]
        encoding_format: Literal["float", "base64"] | None = Field(
            "float", description="base64: little-endian float32 bytes."
        )
        dimensions: Annotated[StrictInt, Field(ge=1, le=1 << 16)] | None = Field(
            None, description="Truncate to this many dimensions and renormalise."
        )

    def _labels(v: str | list[str]) -> list[str]:
        labels = v.split(",") if isinstance(v, str) else v
        labels = [s.strip() for s in labels if s and s.strip()]
        if len(labels) < 2:
            raise FieldError("invalid_value", "give at least two labels to choose between")
        if len(labels) > cfg.max_labels:
            raise FieldError("too_many_items", f"too many labels: {len(labels)} (limit {cfg.max_labels})")
        if (n := max(map(len, labels))) > 1000:
            raise FieldError("text_too_long", f"a label is {n:,} characters long (limit 1,000)")
        return labels

    def _template(t: str | None) -> str:
        try:  # the pipeline's own rule, so the CLI and the server refuse the same templates
            return check_template("{}" if t is None else t)
        except InputError as exc:
            raise FieldError("invalid_value", str(exc)) from None

    class ClassifyRequest(_ImageRequest):
        """Zero-shot classification: each image against the labels, as the pipeline's ``classify``."""

        labels: Annotated[
            Text | list[Text],
            AfterValidator(_labels),
            Field(
                description=f"At least two labels (a list, or one comma-separated string; at most {cfg.max_labels})."
            ),
        ]
        template: Annotated[Text | None, AfterValidator(_template)] = Field(
            None,
            validate_default=True,
            description="Prompt template with '{}' where the label goes, e.g. 'a photo of a {}.'",
        )

    class CaptionRequest(_ImageRequest):
        """Captions, greedy or beam; ``stream`` sends the text as server-sent events while it is generated."""

        max_new_tokens: Annotated[StrictInt, Field(ge=1, le=cfg.max_new_tokens)] | None = Field(
            None, description="Upper bound of new tokens (each model's own bound is in GET /v1/models)."
        )
        num_beams: Annotated[StrictInt, Field(ge=1, le=cfg.max_beams)] | None = None
        stream: StrictBool = Field(
            False, description="Server-sent events: one 'delta' per new piece of text, then [DONE]."
        )

    class StreamOptions(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        include_usage: StrictBool = Field(False, description="A last chunk with the usage counts.")

    class TextPart(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        type: Literal["text"]
        text: Text

    class ImageUrl(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        url: Image
        detail: StrictStr | None = None

    class ImagePart(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        type: Literal["image_url"]
        image_url: ImageUrl | Image = Field(description="{'url': 'data:image/png;base64,...'} (or the URL alone).")

        @property
        def ref(self):
            return self.image_url.url if isinstance(self.image_url, ImageUrl) else self.image_url

    Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]

    class Message(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        role: Literal["system", "developer", "user", "assistant"]
        content: Text | Annotated[list[Part], Field(max_length=cfg.max_items)] | None = None

        def parts(self) -> list:
            if self.content is None:
                return []
            return [TextPart(type="text", text=self.content)] if isinstance(self.content, str) else list(self.content)

        def text(self) -> str:
            return " ".join(p.text for p in self.parts() if isinstance(p, TextPart)).strip()

    NewTokens = Optional[Annotated[StrictInt, Field(ge=1, le=cfg.max_new_tokens)]]

    class ChatRequest(_Request):
        """OpenAI chat completions about images. A VQA model answers the last user turn's text about
        the conversation's latest image (earlier turns only supply that image); it decodes greedily,
        so temperature, top_p and seed do not change its answer."""

        messages: Annotated[list[Message], Field(min_length=1, max_length=cfg.max_items)]
        max_tokens: NewTokens = Field(
            None, description="Upper bound of new tokens (older name of max_completion_tokens)."
        )
        max_completion_tokens: NewTokens = None
        temperature: Annotated[float, Field(ge=0, le=2)] | None = None
        top_p: Annotated[float, Field(gt=0, le=1)] | None = None
        seed: StrictInt | None = None
        n: Literal[1] | None = Field(None, description="One choice per request.")
        stream: StrictBool = Field(False, description="Server-sent events in OpenAI's chat.completion.chunk format.")
        stream_options: StreamOptions | None = None

        @model_validator(mode="after")
        def _size(self):
            chars = sum(len(p.text) for m in self.messages for p in m.parts() if isinstance(p, TextPart))
            if chars > cfg.max_text_chars:
                raise PydanticCustomError(
                    "conversation_too_long",
                    "the conversation has {n} characters of text (limit {limit})",
                    {"n": chars, "limit": cfg.max_text_chars, "param": "messages"},
                )
            return self

        @property
        def new_tokens(self) -> int | None:
            return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

        def conversation(self) -> tuple[list[dict], list[tuple[Any, str]], str, list[tuple[Any, str]]]:
            """For a chat model: (earlier messages in chat-template form, their images as (ref, where),
            the last user turn's text, its images). ApiError (400) when the last message is not the user's."""
            last = len(self.messages) - 1
            if self.messages[last].role != "user":
                raise ApiError(
                    400,
                    f"messages[{last}]: the last message must be the user's turn to answer",
                    code="invalid_value",
                    param=f"messages[{last}]",
                )
            history: list[dict] = []
            images: list[tuple[Any, str]] = []
            for i, m in enumerate(self.messages):
                parts, imgs = [], []
                for j, p in enumerate(m.parts()):
                    if isinstance(p, ImagePart):
                        parts.append({"type": "image"})
                        imgs.append((p.ref, f"messages[{i}].content[{j}].image_url"))
                    else:
                        parts.append({"type": "text", "text": p.text})
                role = "system" if m.role == "developer" else m.role
                if i == last:
                    text = m.text()
                    if not text:
                        raise ApiError(
                            400,
                            f"messages[{i}].content: the last user turn has no text",
                            code="invalid_value",
                            param=f"messages[{i}].content",
                        )
                    return history, images, text, imgs
                history.append({"role": role, "content": parts})
                images += imgs
            raise AssertionError("unreachable")

        def turn(self) -> tuple[str, str, Any, str]:
            """(question, where it is, image ref, where it is): the last user turn's text and the
            latest image up to it. ApiError (400) when either is missing."""
            users = [i for i, m in enumerate(self.messages) if m.role == "user"]
            if not users:
                raise ApiError(400, "messages: no user turn to answer", code="invalid_value", param="messages")
            last = users[-1]
            question = self.messages[last].text()
            if not question:
                raise ApiError(
                    400,
                    f"messages[{last}].content: the last user turn has no text (the question)",
                    code="invalid_value",
                    param=f"messages[{last}].content",
                )
            for i in reversed(users):
                imgs = [(j, p) for j, p in enumerate(self.messages[i].parts()) if isinstance(p, ImagePart)]
                if len(imgs) > 1:
                    raise ApiError(
                        400,
                        f"messages[{i}].content: {len(imgs)} images in one turn; this model answers about one",
                        code="too_many_items",
                        param=f"messages[{i}].content",
                    )
                if imgs:
                    j, part = imgs[0]
                    return question, f"messages[{last}].content", part.ref, f"messages[{i}].content[{j}].image_url"
            raise ApiError(
                400,
                "messages: no image in the conversation: send an image_url part with a data URL",
                code="missing_image",
                param="messages",
            )

    return SimpleNamespace(
        embeddings=EmbeddingsRequest, classify=ClassifyRequest, caption=CaptionRequest, chat=ChatRequest
    )


# -- responses (documentation; routes render with orjson) ---------------------------------------


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    images: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    index: int
    label: str = Field(description="The best label.")
    score: float
    scores: list[LabelScore] = Field(description="Every label, best first.")


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]


class Caption(BaseModel):
    index: int
    caption: str


class CaptionResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Caption]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        0, description="Prompt tokens whose KV cache was kept from an earlier request of the conversation."
    )


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "mmdeploy"
    family: str | None = None
    variant: str | None = None
    capabilities: list[str]
    max_new_tokens: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


RESPONSE_MODELS = SimpleNamespace(
    embeddings=EmbeddingsResponse,
    classify=ClassifyResponse,
    caption=CaptionResponse,
    chat=ChatCompletion,
    model=ModelCard,
    models=ModelList,
    error=ErrorResponse,
)


# -- pydantic's error -> the API's ------------------------------------------------------------

_CODES = {
    "missing": "missing_field",
    "too_short": "empty_input",
    "literal_error": "invalid_value",
    "less_than_equal": "invalid_value",
    "greater_than_equal": "invalid_value",
    "less_than": "invalid_value",
    "greater_than": "invalid_value",
    "model_type": "invalid_json",
    "union_tag_invalid": "invalid_value",
    "union_tag_not_found": "missing_field",
}


def _is_union_tag(part: Any) -> bool:
    # pydantic names the union member it tried in the location: 'str', 'list[function-after[...]]', ...
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none"))


def _param(loc: tuple) -> str:
    out = ""
    for k, part in enumerate(loc):
        if _is_union_tag(part):
            continue
        # a union member's class name (ImageUrl), or a discriminator tag before its same-named field
        if isinstance(part, str) and (part[:1].isupper() or (k + 1 < len(loc) and loc[k + 1] == part)):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(exc: ValidationError) -> ApiError:
    """The most specific of pydantic's errors (a union reports every member) as one 400."""
    errors = exc.errors(include_url=False)
    # deepest first; at equal depth a member whose type matched (empty list, too long) says more
    best = max(
        errors, key=lambda e: (len([p for p in e["loc"] if not _is_union_tag(p)]), not e["type"].endswith("_type"))
    )
    ctx = best.get("ctx") or {}
    param = _param(best["loc"]) or ctx.get("param")
    cause = ctx.get("error")
    if isinstance(cause, FieldError):
        code, msg = cause.code, str(cause)
    else:
        kind = best["type"]
        code = _CODES.get(kind) or (
            "too_many_items" if kind == "too_long" else "invalid_type" if kind.endswith("_type") else kind
        )
        msg = best["msg"]
        if kind.endswith("_type") and "input" in best:
            msg += f", got {json_type(best['input'])}"
        if kind == "model_type":
            msg = f"body must be a JSON object, got {json_type(best.get('input'))}"
    if param and best["loc"]:
        msg = f"{param}: {msg[0].lower() + msg[1:] if msg[:1].isupper() and msg[1:2].islower() else msg}"
    return ApiError(400, msg, code=code, param=param)
