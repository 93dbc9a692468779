"""The worker's wire format: safetensors bodies (never pickle, never file paths).

Request (``POST /jobs``): one tensor per condition channel, named by modality (``ct``, ``ptv``, …),
float16 or float32, each of the model's crop shape (D, H, W); the safetensors metadata holds
``"options"``: JSON ``{"steps": 1–50, "seed": int, "num_candidates": 1–16}``.

Result (``GET /jobs/{id}/result``): one tensor ``candidates`` (N, D, H, W) float32 (the target
channels on the crop, as :meth:`~dosediffusion.model.pipeline.DoseDiffusionPipeline.sample_channels`
returns them); metadata ``"timing"``: JSON seconds per stage.

The header is parsed and checked here before ``safetensors`` reads any tensor, so a bad body costs
no more than its header: :func:`request_layout` checks it as soon as its bytes have arrived (tensor
names against the model's conditions, dtypes, shapes, offsets, options) and says how long the whole
body must be; every problem, however malformed (wrong types, huge numbers, deep nesting), is an
:class:`~dosediffusion.errors.InputError` naming it, never a crash.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from dosediffusion.errors import InputError
from dosediffusion.model.limits import MAX_CANDIDATES, MAX_STEPS

#: The response header that names the worker's instance: a new value means the worker restarted.
INSTANCE_HEADER = "X-DoseDiffusion-Instance"
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
REQUEST_DTYPES = {"F16": np.float16, "F32": np.float32}
OPTION_KEYS = ("steps", "seed", "num_candidates")
MAX_HEADER_BYTES = 1 << 20


def encode_request(channels: Mapping[str, np.ndarray], steps: int, seed: int, num_candidates: int = 1) -> bytes:
    """Condition channels (D, H, W) and sampling options → request body. Channels are sent as
    float32 (float16 is accepted by the worker but would change the prediction)."""
    options = {"steps": int(steps), "seed": int(seed), "num_candidates": int(num_candidates)}
    check_options(options)
    tensors = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in channels.items()}
    return save(tensors, metadata={"options": json.dumps(options)})


def header_size(prefix: bytes) -> int | None:
    """The number of bytes of a request's first 8 + header bytes, from its first bytes (None until 8
    have arrived); an :class:`InputError` when the header would be larger than :data:`MAX_HEADER_BYTES`."""
    if len(prefix) < 8:
        return None
    (size,) = struct.unpack("<Q", prefix[:8])
    if size > MAX_HEADER_BYTES:
        raise InputError("the body is not a safetensors file (bad header length)")
    return 8 + size


def request_layout(prefix: bytes, crop_shape: tuple[int, ...], allowed: set[str]) -> tuple[dict[str, int], int]:
    """Check a request's header (``prefix`` holds at least its first :func:`header_size` bytes) before any
    tensor byte is read: only ``allowed`` channel names, float16/float32, the ``crop_shape``, contiguous
    offsets, valid options. Returns (options, the body's exact length in bytes)."""
    header, metadata = _header(prefix)
    if set(metadata) != {"options"}:
        raise InputError(f"the metadata must hold exactly 'options', got {sorted(metadata)}")
    try:
        options = json.loads(metadata["options"])
    except (ValueError, RecursionError):
        raise InputError("'options' is not JSON of a usable size") from None
    check_options(options)
    if not header:
        raise InputError("the request holds no condition channel")
    unknown = sorted(set(header) - allowed)
    if unknown:
        raise InputError(f"channels {unknown} are not conditions of this model; allowed: {sorted(allowed)}")
    end = 0
    for name, info in sorted(header.items(), key=lambda item: _offsets(item)[0]):
        dtype, shape, (start, stop) = info.get("dtype"), info.get("shape"), _offsets((name, info))
        if not isinstance(dtype, str) or dtype not in REQUEST_DTYPES:
            raise InputError(f"channel {name!r} has dtype {dtype!r}; allowed: {sorted(REQUEST_DTYPES)}")
        if not isinstance(shape, list) or tuple(shape) != tuple(crop_shape):
            raise InputError(f"channel {name!r} has shape {shape!r}, the model's crop is {list(crop_shape)}")
        size = int(np.prod(crop_shape)) * np.dtype(REQUEST_DTYPES[dtype]).itemsize
        if start != end or stop - start != size:
            raise InputError(f"channel {name!r} has data offsets {[start, stop]}; expected {[end, end + size]}")
        end = stop
    return options, header_size(prefix) + end


def _offsets(item: tuple[str, dict]) -> tuple[int, int]:
    offsets = item[1].get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int and 0 <= v < 2**63 for v in offsets)):
        raise InputError(f"channel {item[0]!r} has data offsets {offsets!r}; expected two byte offsets")
    return offsets[0], offsets[1]


def decode_request(body: bytes, crop_shape: tuple[int, ...], allowed: set[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Request body → (channels as float32 (D, H, W), options), checked as :func:`request_layout` says."""
    options, length = request_layout(body, crop_shape, allowed)
    if len(body) != length:
        raise InputError(f"the body is {len(body)} bytes; its header describes {length}")
    tensors = _load(body)
    return {name: array.astype(np.float32, copy=False) for name, array in tensors.items()}, options


def check_options(options: object) -> None:
    """Raise :class:`InputError` unless ``options`` is ``{"steps", "seed", "num_candidates"}`` with
    integers in range (1–50 steps, 1–16 candidates, a 64-bit seed)."""
    if not isinstance(options, dict):
        raise InputError("'options' must be a JSON object")
    unknown, missing = sorted(set(options) - set(OPTION_KEYS)), [k for k in OPTION_KEYS if k not in options]
    if unknown or missing:
        raise InputError(f"options: unknown {unknown}, missing {missing}; expected exactly {list(OPTION_KEYS)}")
    limits = {"steps": (1, MAX_STEPS), "seed": SEED_RANGE, "num_candidates": (1, MAX_CANDIDATES)}
    for key, (low, high) in limits.items():
        value = options[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"options: {key} must be an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise InputError(f"options: {key} must be between {low} and {high}, got {value}")


def encode_result(candidates: np.ndarray, timing: Mapping[str, float]) -> bytes:
    """Candidates (N, D, H, W) and timing (seconds per stage) → result body."""
    array = np.ascontiguousarray(candidates, dtype=np.float32)
    return save({"candidates": array}, metadata={"timing": json.dumps({k: float(v) for k, v in timing.items()})})


def decode_result(body: bytes, crop_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Result body → (candidates (N, D, H, W) float32, timing); ``crop_shape`` checks (D, H, W)."""
    header, metadata = _header(body)
    info = header.get("candidates", {})
    if set(header) != {"candidates"} or info.get("dtype") != "F32" or len(info.get("shape", ())) != 4:
        raise InputError("the result must hold one float32 tensor 'candidates' (N, D, H, W)")
    if crop_shape is not None and tuple(info["shape"][1:]) != tuple(crop_shape):
        raise InputError(f"the result's shape {tuple(info['shape'])} does not match the crop {tuple(crop_shape)}")
    try:
        timing = json.loads(metadata.get("timing", "{}"))
    except json.JSONDecodeError:
        raise InputError("the result's timing is not JSON") from None
    return _load(body)["candidates"], timing


def _header(body: bytes) -> tuple[dict[str, dict], dict[str, str]]:
    """The safetensors header of ``body``: (tensor name → {dtype, shape, data_offsets}, metadata)."""
    end = header_size(body)
    if end is None or end > len(body):
        raise InputError("the body is not a safetensors file (too short for its header)")
    try:
        header = json.loads(body[8:end])
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a 5,000-digit number, 50,000-deep nesting
        raise InputError("the body is not a safetensors file (header is not JSON of a usable size)") from None
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        raise InputError("the body is not a safetensors file (header is not an object of objects)")
    metadata = header.pop("__metadata__", None) or {}
    if not all(isinstance(v, str) for v in metadata.values()):
        raise InputError("the safetensors metadata must map strings to strings")
    return header, metadata


def _load(body: bytes) -> dict[str, np.ndarray]:
    try:
        return load(body)
    except (SafetensorError, ValueError, TypeError) as error:
        raise InputError(f"the body is not a valid safetensors file ({error})") from None
