"""Where and how computations run: device resolution, seeding, mixed precision."""
from __future__ import annotations

import contextlib
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, ContextManager, Mapping

import numpy as np
import torch

from util.common.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The processor's model name as Linux names it (/proc/cpuinfo, else ``lscpu``), else what Python knows."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(name: str) -> torch.device:
    """Turn ``cfg.device`` into a device: ``auto`` picks cuda if available, else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"config key 'device': '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"config key 'device' is '{name}' but CUDA is not available here; use 'device auto' or 'device cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"config key 'device' is '{name}' but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"config key 'device' is '{name}' but MPS is not available here; use 'device auto' or 'device cpu'")
    return device


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (all devices) global generators: with ``seed`` on rank 0 (a one-process run), with
    a seed derived from (seed, rank) on the other ranks, so that each process draws its own dropout masks."""
    if rank:
        seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_device(device: torch.device) -> None:
    """Per-device speed settings: on CUDA, cuDNN benchmarks its convolution algorithms once per input shape (the
    training crops and the test inputs have fixed sizes)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def check_amp(amp: str, device: torch.device) -> None:
    """Reject an unknown ``cfg.amp`` value, and bf16/fp16 on a device type this torch has no autocast for."""
    if amp != "off" and amp not in AMP_DTYPES:
        raise UserError(f"config key 'amp' must be one of off, bf16, fp16; got '{amp}'")
    if amp != "off" and not torch.amp.is_autocast_available(device.type):
        raise UserError(f"config key 'amp' is {amp}, but torch {torch.__version__} has no autocast for device "
                        f"'{device.type}'; use amp off")


def autocast(device: torch.device, amp: str) -> ContextManager:
    """A ``torch.autocast`` context for ``amp`` (bf16 | fp16), or a no-op context for ``off``."""
    check_amp(amp, device)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need no loss scaling)."""
    check_amp(amp, device)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a collated batch to ``device`` (other entries, e.g. paths, stay as they are); copies from
    pinned memory to a GPU do not block the host."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def epoch_seed(seed: int, epoch: int) -> int:
    """A dataset seed for training epoch ``epoch``: fresh episodes and augmentations every epoch, a pure function of (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's global RNG states (python, numpy, torch CPU, and ``device``'s if it is a GPU), in a form
    ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Put back what :func:`rng_state` captured (a GPU state onto ``device``, if that is a GPU). A checkpoint with
    one GPU state per visible device whose list does not reach ``device`` is a :class:`UserError`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, list):  # one state per visible device
        if device.index is None or device.index >= len(cuda):
            raise UserError(f"the checkpoint holds GPU random states for {len(cuda)} device(s), this process uses "
                            f"{device}; continue it with the devices it was trained on (CUDA_VISIBLE_DEVICES)")
        cuda = cuda[device.index]
    torch.cuda.set_rng_state(cuda, device)
