"""The reward server's wire format (protocol 1), shared by ``evalsuite.server`` and ``evalsuite.remote``.

Why one module: the server and its client must agree byte for byte, and neither should need the
other's HTTP stack (the client runs without the ``server`` extra).

Images travel as base64 PNG inside the JSON body rather than as multipart: one stdlib parser for
everything, every sample stays one self-contained object, and any HTTP client can produce it. Base64
costs a third more bytes and ~1 GB/s of CPU, small next to PNG coding and a model forward (see the
server benchmark). PNG is lossless, so the server scores exactly the pixels the client had. Nothing
is ever unpickled: the body is data only.

A SAMPLE is ``{"id", "prompt", "rendered_prompt", "metadata", "image", "source_image", "seed",
"group"}`` (``id`` and ``prompt`` required). An image is ``null``, a base64 PNG string, or
``{"error": message}``: the client could not turn its image into pixels, and the reward must report
that message as if it had failed on the image itself (which is what it does in-process). Values
JSON cannot carry are tagged objects with one key: ``{"$float": "nan"|"inf"|"-inf"}``,
``{"$bytes": base64}``, ``{"$tuple": [...]}``, and ``{"$items": [[key, value], ...]}`` for dicts with
non-string keys (or whose only key looks like a tag). An output's ``scores`` use ``null`` for NaN
(with ``applicable`` false); JSON floats are written with ``repr`` and so round-trip bit-exactly.

What makes a whole request unusable (``PayloadError``): a body that is not the shape above, unknown
fields, invalid base64. What becomes a per-sample error, exactly as in-process: an image that is not
a PNG, cannot be decoded, or has too many pixels (read from the PNG header, before decoding).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from evalsuite.images import MAX_PIXELS, BadImageError, ImageFailure, to_rgb
from evalsuite.reward import RewardOutput
from evalsuite.sample import Sample

PROTOCOL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAMPLE_FIELDS = ("id", "prompt", "rendered_prompt", "metadata", "image", "source_image", "seed", "group")


# -- values -------------------------------------------------------------------------------------------
_TAGS = frozenset({"$float", "$bytes", "$tuple", "$items"})
_FLOAT_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_wire(obj: Any, *, strict: bool = True) -> Any:
    """``obj`` as plain JSON values, non-JSON values tagged. ``strict=False`` writes unknown objects as
    their ``repr`` (for reward details, which must never make a whole response fail)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"$float": "nan" if math.isnan(obj) else "inf" if obj > 0 else "-inf"}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, tuple):
        return {"$tuple": [to_wire(x, strict=strict) for x in obj]}
    if isinstance(obj, list):
        return [to_wire(x, strict=strict) for x in obj]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS)
        if plain:
            return {k: to_wire(v, strict=strict) for k, v in obj.items()}
        return {"$items": [[to_wire(k, strict=strict), to_wire(v, strict=strict)] for k, v in obj.items()]}
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return to_wire(tolist(), strict=strict)
    if strict:
        raise TypeError(f"a {type(obj).__name__} cannot be sent as JSON")
    return repr(obj)


def _untag(d: dict[str, Any]) -> Any:
    if len(d) != 1:
        return d
    ((key, value),) = d.items()
    if key not in _TAGS:
        return d
    if key == "$float" and value in _FLOAT_NAMES:
        return _FLOAT_NAMES[value]  # NaN decodes to the math.nan object, as rewards produce it
    if key == "$bytes" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as e:
            raise ValueError(f"invalid base64 in {key}: {e}") from None
    if key == "$tuple" and isinstance(value, list):
        return tuple(value)
    pairs = isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value)
    if key == "$items" and pairs:
        try:
            return {k: v for k, v in value}
        except TypeError as e:
            raise ValueError(f"unhashable key in $items: {e}") from None
    raise ValueError(f"malformed tagged value {key!r}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; encode it as {{\"$float\": ...}}")


def loads(data: bytes | str) -> Any:
    """Parse strict JSON (no NaN/Infinity literals) and decode tagged values."""
    return json.loads(data, object_hook=_untag, parse_constant=_no_constants)


def dumps(obj: Any) -> bytes:
    """Compact, standard JSON (already converted with ``to_wire``)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")


def encode_output(out: RewardOutput) -> dict[str, Any]:
    """A ``RewardOutput`` as JSON values; NaN scores become ``null``."""
    return {
        "name": out.name,
        "scores": [None if isinstance(s, float) and math.isnan(s) else to_wire(s, strict=False)
                   for s in out.scores],
        "applicable": [bool(a) for a in out.applicable],
        "details": [to_wire(d, strict=False) for d in out.details],
        "errors": [None if e is None else str(e) for e in out.errors],
        "components": {str(k): encode_output(v) for k, v in out.components.items()},
    }


# -- request decoding ---------------------------------------------------------------------------
class PayloadError(ValueError):
    """A request body the server cannot use at all (answered with 400)."""


def decode_samples(payload: Any) -> list[Sample]:
    """The ``samples`` of a decoded request body; raises ``PayloadError`` naming the bad field."""
    if not isinstance(payload, dict):
        raise PayloadError(f"body must be a JSON object {{\"samples\": [...]}}, got {_json_type(payload)}")
    unknown = sorted(set(payload) - {"samples"})
    if unknown:
        raise PayloadError(f"unknown top-level fields {unknown}; expected only 'samples'")
    if "samples" not in payload:
        raise PayloadError("missing field 'samples'")
    samples = payload["samples"]
    if not isinstance(samples, list):
        raise PayloadError(f"'samples' must be a list, got {_json_type(samples)}")
    return [decode_sample(s, f"samples[{i}]") for i, s in enumerate(samples)]


def decode_sample(obj: Any, where: str) -> Sample:
    if not isinstance(obj, dict):
        raise PayloadError(f"{where}: expected an object, got {_json_type(obj)}")
    unknown = sorted(set(obj) - set(SAMPLE_FIELDS))
    if unknown:
        raise PayloadError(f"{where}: unknown fields {unknown}; expected some of {list(SAMPLE_FIELDS)}")
    for key in ("id", "prompt"):
        if key not in obj:
            raise PayloadError(f"{where}: missing field {key!r}")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise PayloadError(f"{where}.metadata: expected an object, got {_json_type(metadata)}")
    group = obj.get("group")
    if isinstance(group, (list, dict)):
        raise PayloadError(f"{where}.group: expected a string or null, got {_json_type(group)}")
    sid = obj["id"]
    if isinstance(sid, (list, dict)):
        raise PayloadError(f"{where}.id: expected a string, got {_json_type(sid)}")
    return Sample(
        id=sid,
        prompt=obj["prompt"],
        image=decode_image(obj.get("image"), f"{where}.image", sid),
        rendered_prompt=obj.get("rendered_prompt"),
        metadata=metadata,
        source_image=decode_image(obj.get("source_image"), f"{where}.source_image", sid),
        seed=obj.get("seed"),
        group=group,
    )


def decode_image(value: Any, where: str, label: Any) -> Image.Image | ImageFailure | None:
    """A wire image as an RGB PIL image, or an ``ImageFailure`` carrying the per-sample error.

    ``label`` is what ``Reward._validate`` passes to ``to_rgb`` in-process, so messages match.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        if set(value) == {"error"} and isinstance(value["error"], str):
            return ImageFailure(value["error"])
        raise PayloadError(
            f"{where}: an image object must be {{\"error\": message}}, got keys {sorted(value)}")
    if not isinstance(value, str):
        raise PayloadError(f"{where}: expected a base64 PNG string, null or {{\"error\": ...}}, "
                           f"got {_json_type(value)}")
    try:
        data = base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise PayloadError(f"{where}: invalid base64 ({e})") from None
    if not data.startswith(PNG_SIGNATURE):
        return ImageFailure(f"sample {label!r}: image is not a PNG (the reward server accepts PNG only)")
    size = png_size(data)  # from the header, before Pillow (whose own bomb check raises past 179 MP)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        return ImageFailure(f"sample {label!r}: image {size[0]}x{size[1]} exceeds {MAX_PIXELS} pixels")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # header only: refuse bombs before decoding
            w, h = probe.size
        if w * h > MAX_PIXELS:
            return ImageFailure(f"sample {label!r}: image {w}x{h} exceeds {MAX_PIXELS} pixels")
        return to_rgb(data, label)
    except BadImageError as e:
        return ImageFailure(str(e))
    except Exception as e:  # PIL's DecompressionBombError and friends: one sample's problem
        return ImageFailure(f"sample {label!r}: cannot decode PNG ({type(e).__name__}: {e})")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, which the format puts first; ``None`` if it is not there."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def decode_output(obj: dict[str, Any]) -> RewardOutput:
    """The inverse of ``encode_output``: ``null`` scores are NaN again."""
    scores = [math.nan if s is None else float(s) for s in obj["scores"]]
    applicable, details, errors = list(obj["applicable"]), list(obj["details"]), list(obj["errors"])
    if not len(scores) == len(applicable) == len(details) == len(errors):
        raise ValueError("scores, applicable, details and errors differ in length")
    if not all(isinstance(a, bool) for a in applicable) or not all(isinstance(d, dict) for d in details):
        raise ValueError("applicable must be booleans and details objects")
    if not all(e is None or isinstance(e, str) for e in errors):
        raise ValueError("errors must be strings or null")
    components = {str(k): decode_output(v) for k, v in obj.get("components", {}).items()}
    return RewardOutput(str(obj["name"]), scores, applicable, details, errors, components)


# -- PNG writing (client side) ---------------------------------------------------------------------
def encode_png(image: Image.Image, level: int = 1) -> bytes:
    """An RGB image as an 8-bit RGB PNG, every row with PNG's "Up" filter.

    Why not ``Image.save``: Pillow holds the GIL while encoding into memory and tries several filters
    per row; this is 2-3x faster at a similar size, and ``zlib.compress`` releases the GIL, so the
    client's worker threads really encode in parallel. Any PNG decoder reads it (the tests decode it
    with Pillow and compare pixels).
    """
    if image.mode != "RGB":
        raise ValueError(f"encode_png takes RGB images, got mode {image.mode}")
    width, height = image.size
    flat = np.asarray(image, dtype=np.uint8).reshape(height, width * 3)
    rows = np.empty((height, 1 + width * 3), dtype=np.uint8)
    rows[:, 0] = 2  # filter type Up: byte minus the byte above, mod 256 (the first row is "minus zero")
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    pixels = zlib.compress(rows.data, level)
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", pixels), _chunk(b"IEND", b"")))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
