"""Reading photos safely: every failure becomes an ImageLoadError that says what is wrong.

Pillow decodes (it reads GIF, honours EXIF orientation and reports the pixel
size from the header before decoding); the result is always BGR uint8 (H, W, 3),
the layout OpenCV and the detectors use.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facediag.edge.errors import ImageLoadError

log = logging.getLogger(__name__)

# 50 megapixels: the largest phone photos are ~48 MP; a 30000x30000 "PNG bomb" is 900 MP.
DEFAULT_MAX_PIXELS = 50_000_000
# The station reads camera-sized frames: 16 MP (4912x3264) is plenty and bounds its memory (issue 11:
# a 49 MP PNG peaked the daemon at 922 MB). Capture sources pass this; the tools use the default above.
STATION_MAX_PIXELS = 16_000_000
# The only decoders Pillow may use (issue 11: 43 formats were accepted, an EPS named .jpg reached
# Ghostscript). GIF and PPM/PGM stay because the project's own photo sets use them (Yale faces are GIF).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")


def _to_uint8_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8 array (H, W, 3). 16-bit data is scaled, not clipped."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint16 and arr.max(initial=0) > 255:
            arr = np.clip(arr, 0, 65535)
        if arr.dtype == np.uint16 or arr.max(initial=0) > 255:
            arr = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        else:
            arr = arr.astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        arr = ((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels are composited onto white (photos with cut-out backgrounds).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a photo as BGR uint8 (H, W, 3), rotated upright according to its EXIF orientation.

    Raises ImageLoadError for a missing path, a folder, an empty file, a file that is
    not an image, a truncated or corrupt image, and an image whose header declares more
    than ``max_pixels`` pixels (refused before decoding, so a decompression bomb costs nothing).
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise ImageLoadError(f"{p}: is a folder, not an image file")
    size = p.stat().st_size
    if size == 0:
        raise ImageLoadError(f"{p}: the file is empty (0 bytes); re-copy or re-export the photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{p}: not a readable image (the content is not JPEG, PNG, GIF, WebP, BMP, TIFF or PPM/PGM, "
            "whatever its name says)"
        ) from None
    except Image.DecompressionBombError as exc:
        # Pillow's own header check (at twice its MAX_IMAGE_PIXELS) fired first.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise ImageLoadError(
            f"{p}: refused before decoding, {pixels} is over the limit of {max_pixels / 1e6:.0f} megapixels; "
            "downscale the photo first"
        ) from None
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError (PPM maxval), SyntaxError, struct.error, ...
        raise ImageLoadError(f"{p}: cannot be opened as an image ({type(exc).__name__}: {exc})") from None
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageLoadError(f"{p}: the header declares an empty image ({width}x{height})")
        if width * height > max_pixels:
            raise ImageLoadError(
                f"{p}: refused before decoding, {width}x{height} = {width * height / 1e6:.0f} megapixels is over the "
                f"limit of {max_pixels / 1e6:.0f} megapixels; downscale the photo first"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = _to_uint8_array(upright if upright is not None else img)
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(f"{p}: refused, the image is too large to decode safely ({exc})") from None
        except MemoryError:
            raise ImageLoadError(f"{p}: refused, not enough memory to decode it") from None
        except Exception as exc:  # noqa: BLE001 - any decoder error (ValueError for inflating PNG chunks, ...)
            raise ImageLoadError(
                f"{p}: the image data is truncated or corrupt ({exc}); re-copy the original photo"
            ) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageLoadError(f"{p}: decoded to an unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb[..., ::-1])
