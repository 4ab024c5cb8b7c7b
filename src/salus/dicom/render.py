"""Rendered images of a frame: JPEG or PNG for viewers (PS3.18 8.3.5.1, 9.1.2; PS3.3 C.11).

The pipeline, on the pixel values pydicom decodes (YBR converted to RGB):

1. **Modality LUT** (PS3.3 C.11.1): Rescale Slope / Intercept or the LUT, for
   grayscale images.
2. **VOI** (PS3.3 C.11.2): the ``window`` the client asks for
   (``center,width[,function]``; function ``linear`` (default),
   ``linear-exact`` or ``sigmoid``, C.11.2.1.2–C.11.2.1.3), else the first
   Window Center / Width of the data set with its VOI LUT Function, else a VOI
   LUT Sequence, else the full range of the frame.
3. MONOCHROME1 is inverted; PALETTE COLOR goes through its colour LUT; colour
   samples wider than 8 bits are scaled by Bits Stored.
4. **Viewport** (PS3.18 8.3.5.1.3): ``vw,vh[,sx,sy,sw,sh]``: the source region
   (default: the whole frame; a negative width or height flips it) is scaled
   to fit ``vw`` × ``vh`` with its aspect ratio kept.
5. Encoded with Pillow: ``image/jpeg`` at ``quality`` (1–100, default 90) or
   ``image/png`` (lossless: a test can check values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset

from salus.dicom.transcode import NotConvertible, frame_count
from salus.errors import InvalidInput, NotFound

__all__ = ["RenderOptions", "Viewport", "Window", "parse_viewport", "parse_window", "render"]

RENDERED_TYPES = ("image/jpeg", "image/png")
THUMBNAIL_SIZE = 128


@dataclass(frozen=True, slots=True)
class Window:
    center: float
    width: float
    function: str = "linear"  # linear | linear-exact | sigmoid


@dataclass(frozen=True, slots=True)
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh


@dataclass(frozen=True, slots=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90


def _numbers(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def parse_window(text: str | None) -> Window | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    if text is None or not text.strip():
        return None
    parts = _numbers(text)
    if len(parts) not in (2, 3):
        raise InvalidInput("window is center,width[,function].", expression=["window"])
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidInput("window center and width are numbers.", expression=["window"]) from None
    function = (parts[2] if len(parts) == 3 else "linear").lower().replace("_", "-")
    if function not in ("linear", "linear-exact", "sigmoid"):
        raise InvalidInput(
            "window function is linear, linear-exact or sigmoid.", expression=["window"]
        )
    if not math.isfinite(center) or not math.isfinite(width) or width <= 0:
        raise InvalidInput("window width must be positive.", expression=["window"])
    if function == "linear" and width < 1:
        raise InvalidInput("A linear window is at least 1 wide.", expression=["window"])
    return Window(center, width, function)


def parse_viewport(text: str | None) -> Viewport | None:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3)."""
    if text is None or not text.strip():
        return None
    parts = _numbers(text)
    if len(parts) not in (2, 6):
        raise InvalidInput("viewport is vw,vh[,sx,sy,sw,sh].", expression=["viewport"])
    try:
        numbers = [int(p) if p else 0 for p in parts]
    except ValueError:
        raise InvalidInput("viewport values are integers.", expression=["viewport"]) from None
    if not (0 < numbers[0] <= 8192 and 0 < numbers[1] <= 8192):
        raise InvalidInput("viewport width and height are 1-8192.", expression=["viewport"])
    region = None
    if len(numbers) == 6:
        region = (numbers[2], numbers[3], numbers[4], numbers[5])
    return Viewport(numbers[0], numbers[1], region)


def parse_quality(text: str | None) -> int:
    if text is None or not text.strip():
        return 90
    try:
        quality = int(text)
    except ValueError:
        raise InvalidInput("quality is an integer 1-100.", expression=["quality"]) from None
    if not 1 <= quality <= 100:
        raise InvalidInput("quality is an integer 1-100.", expression=["quality"])
    return quality


def apply_window(values: Any, window: Window) -> Any:
    """PS3.3 C.11.2.1.2 (linear, linear exact) and C.11.2.1.3.1 (sigmoid), to 0..255."""
    import numpy as np

    x = values.astype(np.float64)
    c, w = window.center, window.width
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "linear-exact":
        low, high = c - w / 2.0, c + w / 2.0
        y = ((x - c) / w + 0.5) * 255.0
    else:
        low, high = c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0
        y = ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
    return np.where(x <= low, 0.0, np.where(x > high, 255.0, y))


def _first(value: Any) -> float:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _grayscale(arr: Any, ds: Dataset, window: Window | None) -> Any:
    import numpy as np
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").lower()
            function = function.replace("_", "-")
            window = Window(
                _first(ds.WindowCenter),
                max(_first(ds.WindowWidth), 1.0),
                function if function in ("linear", "linear-exact", "sigmoid") else "linear",
            )
        except (TypeError, ValueError, IndexError):
            window = None
    if window is not None:
        out = apply_window(values, window)
    else:
        if "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, prefer_lut=True)
        values = values.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        out = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _color(arr: Any, ds: Dataset) -> Any:
    import numpy as np

    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored", 8) or 8)
    shift = max(bits - 8, 0)
    return np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def _frame_pixels(ds: Dataset, index: int) -> Any:
    from pydicom.pixels.utils import pixel_array

    try:
        return pixel_array(ds, index=index)
    except Exception:
        raise NotConvertible("The image cannot be decoded for rendering.") from None


def render(ds: Dataset, frame: int, options: RenderOptions) -> bytes:
    """The 1-based ``frame`` of ``ds`` rendered as ``options.media_type``."""
    from PIL import Image

    count = frame_count(ds)
    if count == 0:
        raise NotFound("This instance has no image to render.")
    if not 1 <= frame <= count:
        raise NotFound("No such frame in this instance.")
    arr = _frame_pixels(ds, frame - 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
        except Exception:
            raise NotConvertible("The palette colour image cannot be rendered.") from None
        image = Image.fromarray(_color(rgb, ds), "RGB")
    elif arr.ndim == 3 and arr.shape[-1] == 3:
        image = Image.fromarray(_color(arr, ds), "RGB")
    elif arr.ndim == 2:
        image = Image.fromarray(_grayscale(arr, ds, options.window), "L")
    else:
        raise NotConvertible("This image layout cannot be rendered.")
    image = _viewport(image, options.viewport)
    out = BytesIO()
    if options.media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def _viewport(image: Any, viewport: Viewport | None) -> Any:
    from PIL import Image

    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        sw = sw or image.width - sx
        sh = sh or image.height - sy
        flip_x, flip_y = sw < 0, sh < 0
        left, right = sorted((sx, sx + sw))
        top, bottom = sorted((sy, sy + sh))
        left, top = max(left, 0), max(top, 0)
        right, bottom = min(right, image.width), min(bottom, image.height)
        if right <= left or bottom <= top:
            raise InvalidInput("The viewport region is outside the image.", expression=["viewport"])
        image = image.crop((left, top, right, bottom))
        if flip_x:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if flip_y:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image
