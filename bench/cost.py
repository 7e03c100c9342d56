"""What one step of each stage costs on this machine, to plan a run: a stage-1 training iteration
(PSPNet over the ``--dataset``'s base classes, ``--stage1-size`` crops, ``--stage1-batch``; the SGD groups of
train_base.py), a stage-1 validation image, a stage-2 training iteration (MIANet, ``--size``, ``--stage2-batch``,
``--shots``) and a test episode (MIANet, ``--size``, batch 1). Weights and inputs are random (speed does not
depend on them).

Each figure is the median of ``--repeats`` timed calls after one untimed warm-up call, with the peak RSS of
the calls and, on CUDA, their peak GPU memory (``torch.cuda.max_memory_allocated``; n/a elsewhere). Also printed:
the CPU model, the 1-minute load average before and after, and the share of the cores the timed calls got (other
jobs on the machine inflate the times; the output says so), and per step the median CPU seconds of the process (all
its threads), which other jobs inflate far less than the wall time. The stage-1 warm-up iteration also counts its
floating-point operations (``torch.utils.flop_counter``: convolutions and matrix products, forward and backward) and
the bytes of the tensors autograd keeps for its backward (each storage once, weights included): figures that do not
depend on the device, to estimate a GPU's time and memory.

``--stage1-loss plain`` computes the stage-1 loss in one piece (every image's upsampled logits at once)
instead of in chunks (``model.pspnet.upsampled_cross_entropy``); ``--only stage1`` skips stage 2 (FSS-1000's
stage 2 is PASCAL's network: 2 output classes, the same sizes). Run each setting in its own process: the peak
RSS of a call is reset to the RSS at its start, which includes what earlier calls left allocated.

    python -m bench.cost [--dataset pascal|coco|fss] [--backbone resnet50] [--stage1-batch 12] [--stage2-batch 4]
                         [--stage1-loss chunked|plain] [--only stage1|stage2] [--device cuda]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.speed import PeakMemory, _sync
from util.common.config import Config, load_config
from util.common.random_inputs import episode_tensors
from util.common.runtime import cpu_model, resolve_device
from util.runs.weights import build_mianet, build_pspnet


class Timer:
    """Times calls; ``cpu`` and ``wall`` sum the process CPU time and the wall time of every timed call."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats, self.memory = device, repeats, PeakMemory(device)
        self.cpu = self.wall = 0.0

    def __call__(self, call: Callable[[], None],
                 warm_up: Callable[[], None] | None = None) -> tuple[float, float, float, float]:
        """Median wall seconds and median process CPU seconds of ``repeats`` calls after one warm-up call
        (``warm_up``, else ``call``), their peak RSS and peak CUDA allocation (MB; NaN off CUDA)."""
        (warm_up or call)()
        seconds, cpu_seconds, peaks, gpu_peaks = [], [], [], []
        for _ in range(self.repeats):
            self.memory.reset()
            _sync(self.device)
            cpu, start = time.process_time(), time.perf_counter()
            call()
            _sync(self.device)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu)
            self.cpu, self.wall = self.cpu + cpu_seconds[-1], self.wall + seconds[-1]
            rss, gpu = self.memory.read()
            peaks.append(rss)
            gpu_peaks.append(gpu)
        return statistics.median(seconds), statistics.median(cpu_seconds), max(peaks), max(gpu_peaks)


class StepCounts:
    """Floating-point operations of one call and the bytes autograd keeps for its backward (each storage once)."""

    def __init__(self) -> None:
        self.flops, self.kept_bytes = 0, 0
        self._storages: set[int] = set()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._storages:
            self._storages.add(storage.data_ptr())
            self.kept_bytes += storage.nbytes()
        return tensor

    def count(self, call: Callable[[], None]) -> None:
        with FlopCounterMode(display=False) as flops, torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            call()
        self.flops = flops.get_total_flops()


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def stage1_rows(args: argparse.Namespace, cfg: Config, device: torch.device, timed: Timer,
                counts: StepCounts) -> list[tuple]:
    """A stage-1 training iteration (its warm-up counted into ``counts``) and a validation image of a random PSPNet."""
    pspnet = build_pspnet(cfg)[0].to(device)
    if args.stage1_loss == "plain":
        pspnet.loss_chunk_bytes = 2 ** 62
    num_classes = pspnet.cls[-1].out_channels
    optimizer = torch.optim.SGD(pspnet.parameter_groups(cfg.base_learner_lr, cfg.base_head_lr_mult),
                                lr=cfg.base_learner_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.stage1_batch, 3, args.stage1_size, args.stage1_size, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (args.stage1_batch, args.stage1_size, args.stage1_size), generator=gen)
    labels[:, :4] = pspnet.ignore_label
    labels = labels.to(device)

    def step() -> None:
        pspnet.train()
        optimizer.zero_grad(set_to_none=True)
        pspnet(images, labels)["loss"].backward()
        optimizer.step()

    def validate() -> None:
        pspnet.eval()
        with torch.inference_mode():
            pspnet(images[:1])

    name = (f"stage 1 training iteration, {num_classes} classes, {args.stage1_size} px, batch {args.stage1_batch}, "
            f"loss {args.stage1_loss}")
    return [(name, *timed(step, warm_up=lambda: counts.count(step)), args.stage1_batch),
            (f"stage 1 validation image, {num_classes} classes, {args.stage1_size} px", *timed(validate), 1)]


def stage2_rows(args: argparse.Namespace, cfg: Config, device: torch.device, timed: Timer) -> list[tuple]:
    """A stage-2 training iteration and a test episode of a random MIANet."""
    mianet = build_mianet(cfg).to(device)
    optimizer = torch.optim.SGD(list(mianet.trainable_parameters()), lr=cfg.base_lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    train = episode_tensors(args.stage2_batch, args.shots, args.size, device, cfg.ignore_label)
    test = episode_tensors(1, args.shots, args.size, device, cfg.ignore_label)

    def step() -> None:
        mianet.train()
        optimizer.zero_grad(set_to_none=True)
        mianet(train["query"], train["supports"], train["support_masks"], train["class_ids"],
               query_label=train["query_label"])["loss"].backward()
        optimizer.step()

    def episode() -> None:
        mianet.eval()
        with torch.inference_mode():
            mianet(test["query"], test["supports"], test["support_masks"], test["class_ids"])

    return [(f"stage 2 training iteration, {args.size} px, batch {args.stage2_batch}, {args.shots}-shot", *timed(step),
             args.stage2_batch),
            (f"test episode, {args.size} px, {args.shots}-shot", *timed(episode), 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--dataset", default="pascal", choices=("pascal", "coco", "fss"),
                        help="class count (stage 1: the base classes of fold 0) and word vectors")
    parser.add_argument("--stage1-size", type=int, default=417)
    parser.add_argument("--stage1-batch", type=int, default=12)
    parser.add_argument("--stage1-loss", default="chunked", choices=("chunked", "plain"),
                        help="stage-1 loss over chunks of images within a memory budget (the training code) or in one piece")
    parser.add_argument("--only", default=None, choices=("stage1", "stage2"))
    parser.add_argument("--size", type=int, default=473, help="stage-2 crop and test size")
    parser.add_argument("--stage2-batch", type=int, default=4)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.dataset == "fss" and args.only != "stage1":
        parser.error("--dataset fss needs --only stage1 (its class vectors come with the data; stage 2 costs PASCAL's)")
    device = resolve_device(args.device)
    timed = Timer(device, args.repeats)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    cfg = load_config(None, {"dataset": args.dataset, "backbone": args.backbone, "pretrained_backbone": False,
                             "shot": args.shots})
    counts = StepCounts()
    rows = ((stage1_rows(args, cfg, device, timed, counts) if args.only != "stage2" else [])
            + (stage2_rows(args, cfg, device, timed) if args.only != "stage1" else []))

    share = timed.cpu / timed.wall
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    print(f"{args.backbone} on {device}: {cpu_model()} ({cores} cores, {threads} torch threads), torch "
          f"{torch.__version__}; median of {args.repeats} after a warm-up")
    print(f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; the timed calls got "
          f"{share:.2f} CPU cores on average")
    if device.type == "cpu" and share < 0.85 * min(cores, threads):
        print("MEASURED UNDER LOAD: other processes were using the CPU; absolute times are inflated")
    print("| step | seconds | CPU seconds | per image or episode | peak RSS MB | peak GPU MB |\n|---|---|---|---|---|---|")
    for name, seconds, cpu_seconds, peak, gpu_peak, items in rows:
        gpu = "n/a" if math.isnan(gpu_peak) else f"{gpu_peak:.0f}"
        print(f"| {name} | {seconds:.2f} | {cpu_seconds:.2f} | {seconds / items:.2f} | {peak:.0f} | {gpu} |")
    if args.only != "stage2":
        print(f"stage 1 training iteration (the warm-up, counted): {counts.flops / 1e12:.2f} TFLOP (convolutions and "
              f"matrix products, forward and backward); {counts.kept_bytes / 2 ** 20:.0f} MB of tensors kept for backward")


if __name__ == "__main__":
    main()
