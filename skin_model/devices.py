"""Pick the compute device: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import os

import torch


def select_device(name: str | None = None) -> torch.device:
    """The argument, else `SKIN_MODEL_DEVICE`, else the best device present."""
    chosen = name or os.environ.get("SKIN_MODEL_DEVICE")
    if chosen:
        device = torch.device(chosen)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {chosen!r} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {chosen!r} requested but Apple MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    """A readable name for the UI and the model card."""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"
