"""The body of POST /predict, and the checks a request passes before it is queued: what the
schema cannot say (characters per text, pairs a chat model cannot read, images that decode)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from headkit.ship.serve.config import ServeLimits

MAX_IMAGE_PIXELS = 40_000_000  # per request (decoded as RGB: 120 MB); PIL itself warns at 89M per image
IMAGE_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
DECODING_THREADS = 2


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = Field(default=None, min_length=1, description="texts, for a text model")
    text_pairs: list[StrictStr] | None = Field(
        default=None,
        min_length=1,
        description="the second text of each pair, one per text (sentence pairs; a question-answering model: the "
        "contexts of the questions in texts)",
    )
    images: list[StrictStr] | None = Field(
        default=None, min_length=1, description="base64-encoded image files, for an image model (never paths)"
    )
    heads: list[StrictStr] | None = Field(
        default=None, min_length=1, description="heads to answer, the only ones computed (default: all)"
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="generated texts: at most this many tokens (default: the server's limit)"
    )

    @model_validator(mode="after")
    def one_kind_of_input(self) -> PredictRequest:
        if (self.texts is None) == (self.images is None):
            raise ValueError('give exactly one of "texts" or "images"')
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts or []):
            raise ValueError('"text_pairs" holds one second text for each of "texts"')
        return self


def decode_images(items: list[str], max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[list, str | None]:
    """PIL images from base64 strings, or an error naming the first bad item. Nothing is read
    from disk: a path (or any text that is not base64 image bytes) is refused; only the formats
    in IMAGE_FORMATS are opened (never PostScript, which Pillow hands to Ghostscript); and a
    request whose images hold more than `max_pixels` in all is refused from their headers,
    before their pixels are decoded (a few kB of PNG can claim gigapixels)."""
    import base64
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    images, pixels = [], 0
    for i, item in enumerate(items):
        try:
            data = base64.b64decode(item, validate=True)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                pixels += width * height
                if pixels > max_pixels:
                    return [], (f"images[{i}] is {width}x{height} pixels, {pixels:,} with the images before it; the "
                                f"limit is {max_pixels:,} pixels a request")  # fmt: skip
                image.load()
                images.append(image.convert("RGB"))
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError):
            return [], f"images[{i}] is not a base64-encoded image file (paths and URLs are never read)"
    return images, None


def size_of(request: PredictRequest) -> int:
    """How many items (texts or images) the request holds."""
    return len(request.texts or request.images or [])


@functools.cache
def _decoder() -> concurrent.futures.ThreadPoolExecutor:
    """Threads of their own for image decoding (made once): the default pool also runs the
    prediction calls, and two decoding at once keep a burst of large images from holding more
    memory than that."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=DECODING_THREADS, thread_name_prefix="decode")


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]]


def text_refusal(request: PredictRequest, limits: ServeLimits, chat: bool) -> JSONResponse | None:
    """The answer to a text request over the character limit, or with pairs a chat model cannot read."""
    for field, values in (("texts", request.texts or []), ("text_pairs", request.text_pairs or [])):
        too_long = next((i for i, t in enumerate(values) if len(t) > limits.max_chars), None)
        if too_long is not None:
            chars = len(values[too_long])
            return error(413, f"{field}[{too_long}] has {chars:,} characters; the limit is {limits.max_chars:,}")
    if request.text_pairs is not None and chat:
        return error(422, '"text_pairs" are read by a model of heads on text, not by a chat model')
    return None


def texts_of(request: PredictRequest) -> list[Any]:
    """A text request's items: its texts, or (text, text_pair) tuples."""
    texts = request.texts or []
    return texts if request.text_pairs is None else list(zip(texts, request.text_pairs, strict=True))


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """A JSON `{"error": message, ...}` answer: what was wrong and what to change."""
    return JSONResponse(status_code=status, content={"error": message, **extra}, headers=headers)


async def read_items(
    request: PredictRequest, limits: ServeLimits, reads_images: bool, heads: list[str], chat: bool
) -> list[Any] | JSONResponse:
    """The request's items (texts, (text, text_pair) tuples or decoded images), or the 4xx that
    says what to change. Images are decoded on a thread: PIL must not stall the event loop."""
    wanted, given = ("images", request.images) if reads_images else ("texts", request.texts)
    if given is None:
        return error(422, f'this model reads {wanted}: send {{"{wanted}": [...]}}')
    if len(given) > limits.max_texts:
        return error(413, f"{len(given)} {wanted} in one request; the limit is {limits.max_texts}")
    refused = None if reads_images else text_refusal(request, limits, chat=chat)
    if refused is not None:
        return refused
    unknown = sorted(set(request.heads or []) - set(heads))
    if unknown:
        return error(422, f"unknown head(s) {unknown}; this model answers {heads}")
    if (request.max_new_tokens or 0) > limits.max_new_tokens:
        return error(
            413, f"max_new_tokens {request.max_new_tokens} is above this server's limit of {limits.max_new_tokens}"
        )
    if not reads_images:
        return texts_of(request)
    images, problem = await asyncio.get_running_loop().run_in_executor(_decoder(), decode_images, given)
    return error(422, problem) if problem else images
