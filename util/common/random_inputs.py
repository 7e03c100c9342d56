"""Random network inputs in the format the datasets deliver, for the benchmarks (speed does not depend on the
values) and the model tests (shapes, gradients)."""
from __future__ import annotations

import torch


def episode_tensors(batch: int, shots: int, size: int, device: torch.device, ignore_label: int,
                    seed: int | None = None) -> dict[str, torch.Tensor]:
    """Random images (seed: ``size * 10 + shots`` unless given); support masks and query label with a
    foreground box, background and an ``ignore_label`` border; class ids 1..batch."""
    gen = torch.Generator().manual_seed(size * 10 + shots if seed is None else seed)
    masks = torch.zeros(batch, shots, size, size, dtype=torch.long)
    masks[..., size // 4: size * 3 // 4, size // 5: size * 2 // 3] = 1
    masks[..., :3, :] = ignore_label
    label = torch.zeros(batch, size, size, dtype=torch.long)
    label[:, size // 3:, : size // 2] = 1
    label[:, -2:, :] = ignore_label
    tensors = {"query": torch.randn(batch, 3, size, size, generator=gen),
               "supports": torch.randn(batch, shots, 3, size, size, generator=gen), "support_masks": masks,
               "class_ids": torch.arange(1, batch + 1), "query_label": label}
    return {k: v.to(device) for k, v in tensors.items()}
