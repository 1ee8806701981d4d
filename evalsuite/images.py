"""Turning whatever a caller hands us into an RGB PIL image, with errors that name the sample."""

from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs well before PIL's own warning
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # every complete PNG ends with this empty IEND chunk


class BadImageError(ValueError):
    """An input image that cannot be used; the message names the sample."""


class ImageFailure:
    """Stands in for an image that could not be obtained (e.g. the reward server's client could not
    read it): ``to_rgb`` raises the recorded error, so the reward reports it per sample as usual."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __array__(self, *args, **kwargs):  # a reward reading pixels directly fails the same way
        raise BadImageError(self.message)

    def __repr__(self) -> str:
        return f"ImageFailure({self.message!r})"


def as_source_image_error(message: str, sample_id: str) -> str:
    """``sample 'x': …`` → ``sample 'x': source image: …`` (idempotent), for the editing input."""
    prefix = f"sample {sample_id!r}: "
    if message.startswith(prefix) and not message.startswith(prefix + "source image: "):
        return prefix + "source image: " + message[len(prefix):]
    return message


def to_rgb(image: Any, sample_id: str = "?") -> Image.Image:
    """Return ``image`` as an RGB PIL image.

    Accepts PIL images (any mode: RGBA is composited on white, 16-bit and float are rescaled),
    encoded bytes, file paths, HWC uint8/float numpy arrays and CHW float tensors in [0, 1].
    """
    if image is None:
        raise BadImageError(f"sample {sample_id!r}: no image")
    if isinstance(image, ImageFailure):
        raise BadImageError(image.message)
    where = f"sample {sample_id!r}: "
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = _decode(bytes(image), where)
    elif isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BadImageError(f"{where}cannot read image file {image!s}: {e}") from e
        where += f"image file {image!s}: "  # a listing's sample id is often just a line number
        image = _decode(data, where)
    elif not isinstance(image, Image.Image):
        image = _from_array(image, sample_id)

    _check_size(image.size, where)
    return _as_rgb(image, sample_id)


def _check_size(size: tuple[int, int], where: str) -> None:
    w, h = size
    if w == 0 or h == 0:
        raise BadImageError(f"{where}image has zero size {w}x{h}")
    if w * h > MAX_PIXELS:
        raise BadImageError(f"{where}image {w}x{h} exceeds {MAX_PIXELS} pixels")


def _decode(data: bytes, where: str) -> Image.Image:
    """Decode encoded bytes; the size is checked from the header first, so a bomb is never decoded."""
    try:
        img = Image.open(io.BytesIO(data))  # lazy: reads the header only
        _check_size(img.size, where)
        img.load()  # force full decode so truncated files fail here, not mid-batch
    except Image.DecompressionBombError as e:  # PIL's own limit, hit in open() before our check
        raise BadImageError(f"{where}image exceeds {MAX_PIXELS} pixels ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, BadImageError):
            raise
        raise BadImageError(f"{where}corrupt or truncated image bytes ({_detail(e)})") from e
    return img


def _detail(error: BaseException) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))  # no memory addresses: errors must be reproducible


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Why the image file at ``path`` cannot be used (missing, empty, truncated…), or None if it looks whole.

    Cheap enough to run over every image of a finished run: reads the header and, for PNG, the last
    chunk (a truncated PNG loses its IEND); other formats get PIL's ``verify()``. Never decodes pixels.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with Image.open(path) as img:
            _check_size(img.size, "")
            if img.format != "PNG":
                img.verify()
                return None
        with open(path, "rb") as f:
            f.seek(max(0, size - len(PNG_END)))
            if f.read() != PNG_END:
                return "truncated PNG (no IEND chunk at the end)"
    except FileNotFoundError:
        return "missing"
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"unreadable ({_detail(e)})"
    return None


def _from_array(array: Any, sample_id: str) -> Image.Image:
    if hasattr(array, "detach"):  # torch tensor, CHW in [0, 1]
        t = array.detach().float().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        array = t.numpy()
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise BadImageError(f"sample {sample_id!r}: expected an HxW or HxWxC image, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all():
            raise BadImageError(f"sample {sample_id!r}: image contains NaN or inf")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = _rescale_int(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def _rescale_int(arr: np.ndarray) -> np.ndarray:
    top = 65535 if arr.max(initial=0) > 255 else 255
    return (arr.astype(np.float64) * (255.0 / top)).round().clip(0, 255).astype(np.uint8)


def _as_rgb(img: Image.Image, sample_id: str) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise BadImageError(f"sample {sample_id!r}: image contains NaN or inf")
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
            arr = (np.clip(arr / top, 0, 1) * 255).round().astype(np.uint8)
        else:
            arr = _rescale_int(arr.astype(np.int64).clip(0, None))
        return Image.fromarray(arr).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise BadImageError(f"sample {sample_id!r}: cannot convert mode {img.mode} to RGB ({e})") from e
