"""engine.images against real files, all made here with Pillow (or by hand) at test time."""

from __future__ import annotations

import io
import random
import resource
import struct
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image, features

from engine.errors import ImageRejected, UserError
from engine.images import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    ImageInfo,
    decode_image,
    inspect_image,
    reduce_for_side,
    to_png_bytes,
)
from tests.conftest import png_header_only  # noqa: F401  (shared with the CLI and plugin tests)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
HAS_WEBP = features.check("webp")


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int]) -> Image.Image:
    """Random pixels, so compressed data is long enough to cut in half."""
    width, height = size
    return Image.frombytes("RGB", size, random.Random(0).randbytes(width * height * 3))


def reject(call, *args, **kwargs) -> str:
    """Run a call that must refuse the image; return its message after checking a person can read it."""
    with pytest.raises(ImageRejected) as caught:
        call(*args, **kwargs)
    assert isinstance(caught.value, UserError)
    message = str(caught.value)
    assert message[:1].isupper() and message.endswith("."), message
    assert len(message) < 120, message
    for leak in ("Error", "Exception", "Traceback", "PIL", "Pillow", "cannot identify", "<", "0x"):
        assert leak not in message, message
    return message


def close(pixel, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# --- rejections -------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [inspect_image, decode_image])
def test_zero_bytes_are_rejected(call):
    assert "empty" in reject(call, b"")


@pytest.mark.parametrize("value", ["not bytes", None, 42, Path("cat.png")])
def test_non_bytes_input_is_rejected(value):
    reject(inspect_image, value)
    reject(decode_image, value)


def test_text_renamed_png_is_rejected(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(b"hello, this is definitely a picture of a cat\n")
    message = reject(decode_image, path.read_bytes())
    assert "PNG, JPEG, GIF, WebP, BMP" in message


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {"lossless": True})],
)
def test_truncated_image_is_rejected(fmt, params):
    if fmt == "WEBP" and not HAS_WEBP:
        pytest.skip("Pillow built without WebP")
    data = encode(noise((128, 128)), fmt, **params)
    assert "truncated or corrupt" in reject(decode_image, data[: len(data) // 2])


@pytest.mark.parametrize(("fmt", "params"), [("TIFF", {}), ("ICO", {"sizes": [(32, 32)]})])
def test_unsupported_format_is_rejected_naming_allowed_formats(fmt, params):
    data = encode(Image.new("RGB", (32, 32), RED), fmt, **params)
    assert Image.open(io.BytesIO(data)).format == fmt  # the fixture really is that format
    for call in (inspect_image, decode_image):
        assert "allowed: PNG, JPEG, GIF, WebP, BMP" in reject(call, data)


def test_oversized_file_is_rejected_before_decoding():
    # Not an image at all: the size check must answer before anyone looks at the content.
    message = reject(decode_image, b"\0" * (3 * 1024 * 1024), max_bytes=2 * 1024 * 1024)
    assert message == "That file is 3 MB; the limit is 2 MB."
    real = encode(noise((64, 64)), "PNG")
    assert "the limit is 1 KB" in reject(inspect_image, real, max_bytes=1024)


@pytest.mark.parametrize("call", [inspect_image, decode_image])
def test_header_bomb_is_rejected_without_allocating_pixels(call):
    data = png_header_only(30000, 30000)
    assert len(data) < 200
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    message = reject(call, data)
    assert time.perf_counter() - started < 0.5
    # 30000×30000 greyscale would be 900 MB; the peak must not move by anything like that.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024
    assert "40 megapixels" in message


def test_our_pixel_limit_reads_the_header_and_names_the_size():
    # 81 MP: under Pillow's own bomb limit, over ours, so our check answers with the dimensions.
    message = reject(decode_image, png_header_only(9000, 9000))
    assert message == "That image is 9000×9000 pixels; the limit is 40 megapixels."


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    assert "100×100" in reject(decode_image, data, max_pixels=9_999)
    assert "0.01 megapixels" in reject(inspect_image, data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


def test_raising_our_limit_does_not_get_past_pillows_bomb_check():
    limit_before = Image.MAX_IMAGE_PIXELS
    assert "too many pixels" in reject(decode_image, png_header_only(30000, 30000), max_pixels=10**12)
    # Between Pillow's warning and error thresholds: refused too, not merely warned about.
    assert "pixels" in reject(inspect_image, png_header_only(10000, 10000), max_pixels=10**9)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # global Pillow state left alone


@pytest.mark.parametrize("call", [inspect_image, decode_image])
def test_pillows_bomb_warning_does_not_print_beside_our_refusal(call):
    # 100 MP: Pillow warns (89.5 MP) but does not raise (179 MP); our line is the whole answer.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a plain `python` process shows: each warning once
        from engine import images  # noqa: F401  (already imported: its filter must still hold)
        message = reject(call, png_header_only(10000, 10000))
    assert message == "That image is 10000×10000 pixels; the limit is 40 megapixels."
    assert [str(w.message) for w in caught] == []


# --- aspect ratio and bounded work -----------------------------------------------------------------


def thin_line(width: int, height: int) -> str:
    return (f"That image is {width}×{height} pixels, too long and thin; the longer side may be at most "
            f"{MAX_ASPECT_RATIO} times the shorter.")


@pytest.mark.parametrize("size", [(1, 16384), (1, 65535), (65535, 1), (3, 301)])
@pytest.mark.parametrize("call", [inspect_image, decode_image])
def test_extreme_aspect_ratio_is_refused_from_the_header(call, size):
    data = encode(Image.new("L", size, 128), "PNG")
    assert len(data) < 300  # a tiny upload, well inside the pixel limit
    assert reject(call, data) == thin_line(*size)


def test_aspect_ratio_limit_is_100_to_1_and_admits_long_screenshots():
    assert MAX_ASPECT_RATIO == 100
    assert decode_image(encode(Image.new("RGB", (3, 300), RED), "PNG")).size == (3, 300)
    assert decode_image(encode(Image.new("RGB", (1080, 20000), RED), "PNG")).size == (1080, 20000)
    assert "too long and thin" in reject(reduce_for_side, Image.new("RGB", (1, 16384)), 224)


def test_exif_rotation_does_not_get_a_thin_picture_past_the_limit():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the decoded picture is 16384×1
    data = encode(Image.new("RGB", (1, 16384), RED), "JPEG", exif=exif.tobytes())
    assert reject(decode_image, data) == thin_line(1, 16384)


def test_decoding_for_a_model_side_reduces_big_pictures_by_whole_factors():
    png = encode(Image.new("RGB", (3000, 2000), GREEN), "PNG")
    reduced = decode_image(png, for_side=224)
    assert reduced.size == (1500, 1000) and reduced.getpixel((700, 500)) == GREEN  # 2000 // (3 × 224) = 2
    # A JPEG decodes at 1/8 scale (DCT scaling) while the shorter side stays >= 3 × 224.
    jpeg = encode(Image.new("RGB", (7200, 5400), BLUE), "JPEG", quality=90)
    drafted = decode_image(jpeg, for_side=224)
    assert drafted.size == (900, 675) and close(drafted.getpixel((450, 300)), BLUE)
    assert decode_image(jpeg, for_side=800).size == (3600, 2700)  # 1/2: it must keep 2400
    assert decode_image(jpeg).size == (7200, 5400)  # no side given: the whole picture


def test_ordinary_pictures_are_not_reduced():
    image = Image.new("RGB", (1343, 1343), RED)  # under 2 × 3 × 224 on the shorter side
    assert reduce_for_side(image, 224) is image
    assert decode_image(encode(image, "PNG"), for_side=224).size == (1343, 1343)
    assert decode_image(encode(Image.new("RGB", (640, 480), RED), "JPEG"), for_side=224).size == (640, 480)


# --- decoding -----------------------------------------------------------------------------------


def assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size
    assert image.info == {}


def animation(fmt: str, **params) -> bytes:
    first, *rest = (Image.new("RGB", (16, 16), colour) for colour in (RED, GREEN, BLUE))
    return encode(first, fmt, save_all=True, append_images=rest, duration=100, **params)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("GIF", {}),
        ("PNG", {}),  # APNG
        pytest.param("WEBP", {"lossless": True}, marks=pytest.mark.skipif(not HAS_WEBP, reason="no WebP")),
    ],
)
def test_animation_decodes_to_its_first_frame(fmt, params):
    data = animation(fmt, **params)
    info = inspect_image(data)
    assert (info.format, info.frames, info.width, info.height) == (fmt, 3, 16, 16)
    image = decode_image(data)
    assert_rgb(image, (16, 16))
    assert close(image.getpixel((8, 8)), RED, tolerance=2)


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    source = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    data = encode(source, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode_image(data)
    assert_rgb(image, (32, 32))
    assert close(image.getpixel((16, 16)), RED)


def test_16_bit_png_is_scaled_not_clipped():
    ramp = list(range(0, 65536, 257)) * 4  # 256 steps from black to full white, 4 rows (within 100:1)
    data = encode(Image.frombytes("I;16", (256, 4), struct.pack("<1024H", *ramp)), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_image(data)
    assert_rgb(image, (256, 4))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((128, 0)) == (128, 128, 128)
    assert image.getpixel((255, 0)) == WHITE


def test_16_bit_png_with_transparent_grey_goes_white():
    pixels = struct.pack("<2H", 1000, 40000)
    data = encode(Image.frombytes("I;16", (2, 1), pixels), "PNG", transparency=1000)
    image = decode_image(data)
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == (156, 156, 156)  # 40000 / 257, rounded


def test_exif_rotated_photo_is_turned_upright():
    source = Image.new("RGB", (40, 20), BLUE)
    source.paste(RED, (0, 0, 8, 8))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(source, "JPEG", quality=95, exif=exif.tobytes())

    info = inspect_image(data)
    assert (info.width, info.height) == (20, 40)
    image = decode_image(data)
    assert_rgb(image, (20, 40))
    assert close(image.getpixel((16, 3)), RED)  # stored top-left is now top-right
    assert close(image.getpixel((3, 3)), BLUE)
    assert close(image.getpixel((3, 36)), BLUE)


@pytest.mark.parametrize(
    ("mode", "opaque", "half", "expected_half"),
    [
        ("RGBA", (0, 0, 255, 255), (0, 0, 0, 128), (127, 127, 127)),
        ("LA", (0, 255), (0, 128), (127, 127, 127)),
    ],
)
def test_alpha_is_composited_onto_white(mode, opaque, half, expected_half):
    source = Image.new(mode, (3, 1))
    source.putpixel((0, 0), opaque)
    source.putpixel((1, 0), half)
    # pixel (2, 0) stays fully transparent
    image = decode_image(encode(source, "PNG"))
    assert_rgb(image, (3, 1))
    assert image.getpixel((0, 0)) == (BLUE if mode == "RGBA" else (0, 0, 0))
    assert close(image.getpixel((1, 0)), expected_half, tolerance=2)
    assert image.getpixel((2, 0)) == WHITE


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt):
    source = Image.new("P", (2, 1))
    source.putpalette([*RED, *GREEN])
    source.putpixel((0, 0), 0)
    source.putpixel((1, 0), 1)
    image = decode_image(encode(source, fmt, transparency=1))
    assert_rgb(image, (2, 1))
    assert image.getpixel((0, 0)) == RED
    assert image.getpixel((1, 0)) == WHITE


@pytest.mark.parametrize("mode", ["1", "L"])
def test_black_and_white_and_grey_become_rgb(mode):
    source = Image.new(mode, (2, 1), 0)
    source.putpixel((1, 0), 255)
    image = decode_image(encode(source, "PNG"))
    assert_rgb(image, (2, 1))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 0)) == WHITE


def test_bmp_is_accepted():
    source = Image.new("RGB", (5, 3), GREEN)
    data = encode(source, "BMP")
    assert inspect_image(data) == ImageInfo("BMP", 5, 3, "image/bmp", 1, len(data))
    image = decode_image(data)
    assert_rgb(image, (5, 3))
    assert image.getpixel((4, 2)) == GREEN


def test_inspect_reports_format_content_type_and_size():
    expected_types = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp"}
    if HAS_WEBP:
        expected_types["WEBP"] = "image/webp"
    for fmt, content_type in expected_types.items():
        data = encode(Image.new("RGB", (7, 4), RED), fmt)
        assert inspect_image(data) == ImageInfo(fmt, 7, 4, content_type, 1, len(data))
    assert set(expected_types) <= set(ALLOWED_FORMATS)


def test_jpeg_with_extra_pictures_counts_as_a_still_jpeg():
    first, second = Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    info = inspect_image(data)
    assert (info.format, info.content_type, info.frames) == ("JPEG", "image/jpeg", 1)
    assert close(decode_image(data).getpixel((4, 4)), RED)


def test_bytearray_and_memoryview_are_accepted():
    data = encode(Image.new("RGB", (4, 4), RED), "PNG")
    assert decode_image(bytearray(data)).size == (4, 4)
    assert inspect_image(memoryview(data)).size_bytes == len(data)


def test_default_limit_accepts_an_ordinary_photo_size():
    assert DEFAULT_MAX_PIXELS >= 4000 * 3000
    # Header of a 12 MP photo passes inspection (its pixel data is never needed for that).
    assert inspect_image(png_header_only(4000, 3000)).width == 4000


def test_to_png_bytes_round_trips():
    image = decode_image(encode(Image.new("RGB", (6, 6), GREEN), "JPEG", quality=95))
    data = to_png_bytes(image)
    assert data.startswith(b"\x89PNG")
    assert close(Image.open(io.BytesIO(data)).getpixel((3, 3)), GREEN)
    cmyk = to_png_bytes(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert Image.open(io.BytesIO(cmyk)).convert("RGB").getpixel((0, 0)) == RED


def test_read_image_file_checks_size_before_reading(tmp_path):
    from engine.images import read_image_file

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    assert "the limit is" in reject(read_image_file, big, max_bytes=1024)
    assert "No such file" in reject(read_image_file, tmp_path / "missing.png")
    ok = tmp_path / "ok.png"
    ok.write_bytes(encode(noise((8, 6)), "PNG"))
    data, info = read_image_file(ok)
    assert data == ok.read_bytes() and (info.format, info.width, info.height) == ("PNG", 8, 6)
