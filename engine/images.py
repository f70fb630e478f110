"""Safe decoding of images posted by strangers: size and format allowlist, pixel limits, aspect
ratio, EXIF, animation, and work bounded by what the caller will look at.

Every refusal is an `ImageRejected` whose message can be shown to the person who posted the file.
Only Pillow and the standard library are imported here, so the bot can check uploads without torch.

Why an aspect-ratio limit: CLIP resizes the shorter side to its input size first, so a 1×16384
PNG of 145 bytes (well inside the pixel limit) became a 224×3.7M-pixel intermediate: 4 GB and
most of a minute. At most `MAX_ASPECT_RATIO`:1, that intermediate stays under side² × 100 pixels
(5 MP at 224 px), which still admits long screenshots and panoramas.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from engine.errors import ImageRejected

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 100  # longer side : shorter side (see the module docstring)
# A picture that will be looked at with side S (a model's input) is box-reduced by a whole factor
# while its shorter side stays >= 3 S: Pillow's `reducing_gap=3.0`, "indistinguishable from fair
# resampling in most cases"; the final resize (CLIP's own) then works on a bounded picture.
REDUCING_GAP = 3

_CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
}
_DISPLAY_NAMES = {"WEBP": "WebP"}
_ALLOWED_TEXT = ", ".join(_DISPLAY_NAMES.get(name, name) for name in ALLOWED_FORMATS)

_NOT_BYTES = "That upload isn't a file I can read."
_EMPTY = "That file is empty."
_NOT_AN_IMAGE = f"That file isn't an image I can read (allowed: {_ALLOWED_TEXT})."
_CORRUPT = "The image data is truncated or corrupt."

# Pillow's plugins raise a zoo of exception types on hostile data; all of them mean "corrupt".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                  struct.error, zlib.error)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# We refuse everything above Pillow's warning threshold ourselves (see `_pixel_limit`) with a line
# that names our limit; Pillow's warning would only print beside that line (on stderr, in logs).
# A process-wide filter (catch_warnings is not thread-safe), re-added if a catch_warnings block
# that was open when it was first added has dropped it since.
_QUIET_BOMB_WARNING = ("ignore", None, Image.DecompressionBombWarning, None, 0)

# 16-bit greyscale PNG decodes to these; a plain convert("L") would clip everything above 255 to white.
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # the orientations that rotate by 90 or 270 degrees
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow format name, e.g. "PNG"
    width: int  # after EXIF orientation is applied
    height: int
    content_type: str  # "image/png" ...
    frames: int  # 1 for stills, n_frames for animations
    size_bytes: int


def inspect_image(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageInfo:
    """Cheap check without decoding pixel data: byte size, format allowlist, pixel count from the header.

    Truncated pixel data is only noticed by `decode_image`. Raises ImageRejected.
    """
    size = _checked_size(data, max_bytes)
    with _opened(data, max_pixels) as im:
        width, height = im.size
        if _orientation(im) in _SWAPS_AXES:
            width, height = height, width
        fmt = _format_name(im)
        # MPO's extra pictures are previews or stereo pairs, not animation frames.
        frames = 1 if im.format == "MPO" else getattr(im, "n_frames", 1)
        return ImageInfo(fmt, width, height, _CONTENT_TYPES[fmt], frames, size)


def decode_image(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
    for_side: int | None = None,
) -> Image.Image:
    """Full safe decode to a loaded 8-bit RGB image: the first frame, upright, without metadata.

    `for_side`: the picture will only be looked at with this many pixels a side (a model's input, a
    thumbnail): it may come back reduced, its shorter side never below REDUCING_GAP × `for_side`
    (a JPEG is decoded at 1/2, 1/4 or 1/8 scale then, which is also much cheaper).
    Checks everything `inspect_image` checks first. Raises ImageRejected.
    """
    _checked_size(data, max_bytes)
    with _opened(data, max_pixels) as im:
        im.seek(0)  # animations: the first frame is the picture people see in chat
        if for_side and im.format in ("JPEG", "MPO"):
            _draft(im, REDUCING_GAP * for_side)
        im.load()
        rgb = _to_rgb(ImageOps.exif_transpose(im))
    if for_side:
        rgb = _box_reduced(rgb, REDUCING_GAP * for_side)
    # Drop EXIF (GPS, camera serials) and the like so nothing leaks if the image is posted again.
    rgb.info = {}
    return rgb


def reduce_for_side(image: Image.Image, side: int) -> Image.Image:
    """`image`, box-reduced by a whole factor where its shorter side stays >= REDUCING_GAP × `side`,
    for a transform that resizes it to about `side` pixels (CLIP's preprocess): its cost then no
    longer grows with the picture. Pictures under 2 × REDUCING_GAP × `side` come back as they are.
    Refuses pictures beyond MAX_ASPECT_RATIO (ImageRejected), like `decode_image`."""
    _check_aspect(image.size)
    return _box_reduced(image, REDUCING_GAP * side)


def read_image_file(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, ImageInfo]:
    """A local file's bytes and header info; the size is checked before the file is read."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ImageRejected(f"No such file: {path}.")
    size = file.stat().st_size
    if size > max_bytes:
        raise ImageRejected(f"That file is {_byte_text(size)}; the limit is {_byte_text(max_bytes)}.")
    data = file.read_bytes()
    return data, inspect_image(data, max_bytes=max_bytes, max_pixels=max_pixels)


def _draft(im: Image.Image, min_short_side: int) -> None:
    # JPEG's DCT scaling decodes at 1/s (s = 2, 4, 8) for a fraction of the work and memory.
    width, height = im.size
    scale = next((s for s in (8, 4, 2) if min(width, height) // s >= min_short_side), 1)
    if scale > 1:
        im.draft(None, (width // scale, height // scale))


def _box_reduced(image: Image.Image, min_short_side: int) -> Image.Image:
    factor = min(image.size) // min_short_side
    return image.reduce(factor) if factor >= 2 else image


def to_png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG, for replies and thumbnails."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _checked_size(data: object, max_bytes: int) -> int:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageRejected(_NOT_BYTES)
    size = memoryview(data).nbytes
    if size == 0:
        raise ImageRejected(_EMPTY)
    if size > max_bytes:
        raise ImageRejected(f"That file is {_byte_text(size)}; the limit is {_byte_text(max_bytes)}.")
    return size


@contextmanager
def _opened(data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """Open from the header only, check the pixel count, and turn Pillow's errors into ImageRejected."""
    limit = _pixel_limit(max_pixels)
    if _QUIET_BOMB_WARNING not in warnings.filters:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            _check_pixels(im.size, limit)
            _check_aspect(im.size)
            yield im
    except Image.UnidentifiedImageError:
        raise ImageRejected(_NOT_AN_IMAGE) from None
    except _BOMB_ERRORS:
        # Pillow refused before telling us the size; ours is the limit people need to know.
        raise ImageRejected(f"That image has too many pixels; the limit is {_megapixels(limit)}.") from None
    except _DECODE_ERRORS as exc:
        raise ImageRejected(_CORRUPT) from exc


def _pixel_limit(max_pixels: int) -> int:
    # Pillow warns above its own limit (and raises at twice it); treat that as a refusal too,
    # without touching its global setting.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)


def _check_pixels(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageRejected(f"That image is {width}×{height} pixels; the limit is {_megapixels(limit)}.")


def _check_aspect(size: tuple[int, int]) -> None:
    width, height = size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageRejected(f"That image is {width}×{height} pixels, too long and thin; the longer side may be "
                            f"at most {MAX_ASPECT_RATIO} times the shorter.")


def _orientation(im: Image.Image) -> int:
    # PngImageFile.getexif() decodes the pixels to look for EXIF after them; stay cheap instead.
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    return im.getexif().get(_EXIF_ORIENTATION, 1)


def _format_name(im: Image.Image) -> str:
    # A JPEG carrying extra pictures opens as MPO; to everyone else it is a JPEG.
    return "JPEG" if im.format == "MPO" else im.format


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _WIDE_GREY_MODES:
        im = _scale_wide_grey(im)
    if im.has_transparency_data:
        # Transparent areas become white, as chat clients show them on a light background.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _scale_wide_grey(im: Image.Image) -> Image.Image:
    wide = im.convert("I")
    grey = wide.point(lambda value: value / 257 + 0.5).convert("L")  # 65535 -> 255, rounded
    transparent = im.info.get("transparency")
    if transparent is None:
        return grey
    # Pillow clips to 8 bits before matching the 16-bit tRNS value, so build the alpha ourselves.
    alpha = wide.point([0 if value == transparent else 255 for value in range(65536)], "L")
    return Image.merge("LA", (grey, alpha))


def _byte_text(size: int) -> str:
    # Round up, so a file just over the limit never reads as equal to it.
    if size < 1024 * 1024:
        return f"{math.ceil(size / 1024)} KB"
    megabytes = math.ceil(size * 10 / (1024 * 1024)) / 10
    return f"{megabytes:g} MB"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.3g} megapixels"
