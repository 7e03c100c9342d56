"""What one step of each PASCAL/COCO stage costs on this machine, to plan a run: a stage-1 training iteration
(PSPNet, ``--stage1-size`` crops, ``--stage1-batch``; the SGD groups of train_base.py), a stage-1 validation
image, a stage-2 training iteration (MIANet, ``--size``, ``--stage2-batch``, ``--shots``) and a test episode
(MIANet, ``--size``, batch 1). Weights and inputs are random (speed does not depend on them).

Each figure is the median of ``--repeats`` timed calls after one untimed warm-up call, with the peak RSS of
the calls and, on CUDA, their peak GPU memory (``torch.cuda.max_memory_allocated``; n/a elsewhere). Also printed: the CPU model, the 1-minute load average before and after, and the share of the
cores the timed calls got (other jobs on the machine inflate the times; the output says so).

    python -m bench.cost [--backbone resnet50] [--stage1-batch 12] [--stage2-batch 4] [--device cuda]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Callable

import torch

from bench.speed import PeakMemory, _sync
from model.backbone import build_backbone
from model.pspnet import PSPNet
from util.classes import base_classes
from util.config import Config, load_config
from util.model_io import build_mianet
from util.random_inputs import episode_tensors
from util.runtime import cpu_model, resolve_device

class Timer:
    """Times calls; ``cpu`` and ``wall`` sum the process CPU time and the wall time of every timed call."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats, self.memory = device, repeats, PeakMemory(device)
        self.cpu = self.wall = 0.0

    def __call__(self, call: Callable[[], None]) -> tuple[float, float, float]:
        """Median seconds of ``repeats`` calls after one warm-up call, their peak RSS and peak CUDA allocation (MB;
        NaN off CUDA)."""
        call()
        seconds, peaks, gpu_peaks = [], [], []
        for _ in range(self.repeats):
            self.memory.reset()
            _sync(self.device)
            cpu, start = time.process_time(), time.perf_counter()
            call()
            _sync(self.device)
            seconds.append(time.perf_counter() - start)
            self.cpu, self.wall = self.cpu + time.process_time() - cpu, self.wall + seconds[-1]
            rss, gpu = self.memory.read()
            peaks.append(rss)
            gpu_peaks.append(gpu)
        return statistics.median(seconds), max(peaks), max(gpu_peaks)


def stage1_rows(args: argparse.Namespace, cfg: Config, device: torch.device, timed: Timer) -> list[tuple]:
    """A stage-1 training iteration and a validation image of a random PSPNet."""
    num_classes = len(base_classes(cfg.dataset, cfg.split, cfg.coco_split_style)) + 1
    pspnet = PSPNet(build_backbone(args.backbone), num_classes, cfg.ignore_label).to(device)
    optimizer = torch.optim.SGD(pspnet.parameter_groups(cfg.base_learner_lr, cfg.base_head_lr_mult),
                                lr=cfg.base_learner_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.stage1_batch, 3, args.stage1_size, args.stage1_size, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (args.stage1_batch, args.stage1_size, args.stage1_size), generator=gen)
    labels[:, :4] = 255
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

    return [(f"stage 1 training iteration, {args.stage1_size} px, batch {args.stage1_batch}", *timed(step),
             args.stage1_batch),
            (f"stage 1 validation image, {args.stage1_size} px", *timed(validate), 1)]


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
    parser.add_argument("--dataset", default="pascal", help="class count and word vectors (pascal | coco)")
    parser.add_argument("--stage1-size", type=int, default=417)
    parser.add_argument("--stage1-batch", type=int, default=12)
    parser.add_argument("--size", type=int, default=473, help="stage-2 crop and test size")
    parser.add_argument("--stage2-batch", type=int, default=4)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    timed = Timer(device, args.repeats)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    cfg = load_config(None, {"dataset": args.dataset, "backbone": args.backbone, "pretrained_backbone": False,
                             "shot": args.shots})
    rows = stage1_rows(args, cfg, device, timed) + stage2_rows(args, cfg, device, timed)

    share = timed.cpu / timed.wall
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    print(f"{args.backbone} on {device}: {cpu_model()} ({cores} cores, {threads} torch threads), torch "
          f"{torch.__version__}; median of {args.repeats} after a warm-up")
    print(f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; the timed calls got "
          f"{share:.2f} CPU cores on average")
    if device.type == "cpu" and share < 0.85 * min(cores, threads):
        print("MEASURED UNDER LOAD: other processes were using the CPU; absolute times are inflated")
    print("| step | seconds | per image or episode | peak RSS MB | peak GPU MB |\n|---|---|---|---|---|")
    for name, seconds, peak, gpu_peak, items in rows:
        gpu = "n/a" if math.isnan(gpu_peak) else f"{gpu_peak:.0f}"
        print(f"| {name} | {seconds:.2f} | {seconds / items:.2f} | {peak:.0f} | {gpu} |")


if __name__ == "__main__":
    main()
