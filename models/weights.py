"""Weights as safetensors: save, verified load, and content hashes. Nothing is unpickled."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["WeightsError", "input_major_", "load_weights", "save_weights", "weights_sha256"]


class WeightsError(ValueError):
    """A weights file cannot be read or does not fit the module."""


def save_weights(
    module: nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
) -> str:
    """Write a module's state dict (or a dict of tensors) as safetensors; returns its sha256."""
    tensors = module.state_dict() if isinstance(module, nn.Module) else module
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=metadata)
    return weights_sha256(path)


def load_weights(module: nn.Module, path: str | Path) -> dict[str, str]:
    """Load safetensors into ``module`` after checking key sets and shapes; returns the metadata.

    Raises:
        WeightsError: the file is missing or unreadable, has keys the module lacks (or lacks keys
            it has), or a tensor's shape differs. The message names every offending key.
    """
    path = Path(path)
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise WeightsError(f"Cannot read weights file {path}: {e}.") from e
    expected = module.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    extra = sorted(tensors.keys() - expected.keys())
    wrong = sorted(
        f"{k} (file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected.keys() & tensors.keys()
        if tensors[k].shape != expected[k].shape
    )
    problems = [
        f"missing keys: {', '.join(missing)}" if missing else "",
        f"unexpected keys: {', '.join(extra)}" if extra else "",
        f"wrong shapes: {', '.join(wrong)}" if wrong else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise WeightsError(
            f"Weights file {path} does not fit {type(module).__name__}: "
            + "; ".join(problems)
            + "."
        )
    module.load_state_dict(tensors)
    return metadata


def weights_sha256(path: str | Path) -> str:
    """Hex sha256 of a weights file's bytes (model identity in detections: ``name@sha[:12]``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_M = TypeVar("_M", bound=nn.Module)


def input_major_(module: _M) -> _M:
    """Store each 2-D ``*weight`` parameter input-major, in place; shapes and values unchanged.

    A parameter of shape (out, in) becomes the transposed view of an (in, out)-contiguous tensor,
    so ``F.linear(x, W)`` multiplies ``x`` by a contiguous ``W.T``. For one token per stream
    (a continual step) that matrix-vector product streams the weights about 25% faster on CPU
    (MKL, d=1024: 0.77 vs 1.0 ms for a layer's four matrices), and it is no slower for windows.
    The layout survives ``load_state_dict`` (in-place copy) and ``.to()`` (strides preserved);
    ``save_weights`` writes the usual contiguous (out, in) tensors.
    """
    for name, p in module.named_parameters():
        if p.dim() == 2 and name.endswith("weight") and p.is_contiguous():
            p.data = p.data.t().contiguous().t()
    return module
