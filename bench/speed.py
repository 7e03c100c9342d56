"""Speed and memory of MIANet with ResNet-50, in one process and one run (targets: ``TARGETS``).

For 473 and 641 px, 1-shot and 5-shot, three timings come from the same call, by forward hooks:
- measured: the eval episode (batch 1, ``torch.inference_mode``) or the training step (batch 2:
  zero_grad, forward with losses, backward, SGD step);
- floor: the time inside the backbone, i.e. the passes the call needs over its 1+K (eval) or 2(1+K)
  (train) images; the run stops if a call sends any other number of images through the backbone;
- head: the time inside the trainable modules' forward (down_features, GIG, LFG, IFM), plus the whole
  backward for a training step: work, not overhead.
Overhead ratio: eval ``measured / floor`` (everything beyond the backbone counts: HPM, IFM, upsampling);
train ``measured / (floor + head)`` (HPM, masks, prototypes, losses, glue and the optimizer count).

Also: peak RSS per call (high-water mark reset before it) and its growth over the RSS at the call's
start, and on CUDA the max allocated; data-loader episodes/s on a temporary synth set with 0 and 2
workers (eval rows: test episodes, batch 1; train rows: training episodes, batch 2), each also as the
loader's time per model call over the floor; test.py's evaluation loop (``run_protocol``) on synth with
2 workers against the eval latency alone measured right before and after it; parameter counts; the
473 px 1-shot eval forward next to two bare backbone passes (query, then support: NCHW as given,
inference mode).

Figures are medians over ``--repeats``, after one untimed warm-up call per setting (``--quick`` too: one-time costs
such as allocator growth and kernel selection stay out of the figures), and every repeat loops over all settings so
that changes of machine load hit them alike. ``--amp bf16|fp16`` runs every call under autocast (training steps
with a GradScaler for fp16), as ``amp`` does in training and testing. Model weights are random (speed does not
depend on them).

    python -m bench.speed [--device cuda] [--amp off|bf16|fp16] [--repeats 3] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from tools.make_lists import make_lists
from tools.make_synth import make_synth
from util.common.config import Config, load_config
from util.common.random_inputs import episode_tensors
from util.dataset import EpisodeDataset, episode_collate
from util.common.distributed import DistContext
from util.engine.evaluator import run_protocol
from util.common.runtime import autocast, check_amp, grad_scaler, resolve_device
from util.runs.weights import build_mianet

TARGETS = {"eval": 1.15, "train": 1.3, "test": 1.2}  # overhead ratios (see above); test.py s/episode / eval latency
SIZES, QUICK_SIZES = (473, 641), (473,)
SHOTS = (1, 5)
TRAIN_BATCH = 2
SYNTH_TRAIN, SYNTH_VAL = 240, 120
LOADER_EPISODES = 100_000  # more than any timed window reads
CLEAR_REFS = Path("/proc/self/clear_refs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class ForwardTimer:
    """Seconds spent inside the forward of ``modules`` and the batch items they took, since :meth:`reset`."""

    def __init__(self, modules: list[nn.Module], device: torch.device) -> None:
        self.device, self.seconds, self.items, self._start = device, 0.0, 0, 0.0
        for module in modules:
            module.register_forward_pre_hook(self._before)
            module.register_forward_hook(self._after)

    def reset(self) -> None:
        self.seconds, self.items = 0.0, 0

    def _before(self, module: nn.Module, args: tuple) -> None:
        _sync(self.device)
        self.items += args[0].shape[0]
        self._start = time.perf_counter()

    def _after(self, module: nn.Module, args: tuple, output: object) -> None:
        _sync(self.device)
        self.seconds += time.perf_counter() - self._start


class PeakMemory:
    """Peak RSS and CUDA max allocated (MB) of one call: high-water marks reset before, read after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = sys.platform.startswith("linux") and os.access(CLEAR_REFS, os.W_OK)

    def reset(self) -> None:
        if self.resettable:
            CLEAR_REFS.write_text("5")  # Linux: resets VmHWM, and with it ru_maxrss, to the current RSS
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> tuple[float, float]:
        """(peak RSS, CUDA max allocated) since :meth:`reset`, in MB."""
        scale = 1 / 2 ** 20 if sys.platform == "darwin" else 1 / 1024  # ru_maxrss: bytes on macOS, kB on Linux
        cuda = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if self.device.type == "cuda" else float("nan")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, cuda


@dataclass
class Row:
    """Samples of one (size, shots, path) setting; ``path`` is ``eval`` or ``train``."""

    size: int
    shots: int
    path: str
    measured: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    head: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    growth: list[float] = field(default_factory=list)
    cuda: list[float] = field(default_factory=list)
    loader: dict[int, float] = field(default_factory=dict)  # workers -> episodes/s

    @property
    def batch(self) -> int:
        return TRAIN_BATCH if self.path == "train" else 1

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))

    def ratio(self) -> float:
        """Median over the calls of each call's overhead ratio (eval: measured/floor; train: measured/(floor+head))."""
        work = self.head if self.path == "train" else [0.0] * len(self.floor)
        return statistics.median(m / (f + w) for m, f, w in zip(self.measured, self.floor, work))


class Bench:
    """The model, its optimizer and the instruments shared by every measurement."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.device, self.amp = device, cfg.amp
        self.model = build_mianet(cfg).to(device)
        self.optimizer = torch.optim.SGD(list(self.model.trainable_parameters()), lr=cfg.base_lr,
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scaler = grad_scaler(device, cfg.amp)
        trainable = [m for name, m in self.model.named_children()
                     if name != "backbone" and any(p.requires_grad for p in m.parameters())]
        self.backbone = ForwardTimer([self.model.backbone], device)
        self.head = ForwardTimer(trainable, device)
        self.memory = PeakMemory(device)

    def measure(self, row: Row, inputs: dict[str, torch.Tensor]) -> None:
        """One eval episode or training step of ``row``'s setting, with its floor, head and peak memory."""
        call = self._eval if row.path == "eval" else self._train
        self.model.train(row.path == "train")
        self.memory.reset()
        rss_before = self.memory.read()[0]
        self.backbone.reset()
        self.head.reset()
        _sync(self.device)
        start = time.perf_counter()
        backward = call(inputs)
        _sync(self.device)
        row.measured.append(time.perf_counter() - start)
        row.floor.append(self.backbone.seconds)
        row.head.append(self.head.seconds + backward)
        rss, cuda = self.memory.read()
        row.rss.append(rss)
        row.growth.append(rss - rss_before)
        row.cuda.append(cuda)
        expected = (1 + row.shots) * row.batch
        if self.backbone.items != expected:
            raise RuntimeError(f"{row.path} {row.size} px {row.shots}-shot sent {self.backbone.items} images through "
                               f"the backbone, {expected} expected: something is computed twice or skipped")

    def _eval(self, inputs: dict[str, torch.Tensor]) -> float:
        with torch.inference_mode(), autocast(self.device, self.amp):
            self.model(inputs["query"], inputs["supports"], inputs["support_masks"], inputs["class_ids"])
        return 0.0

    def _train(self, inputs: dict[str, torch.Tensor]) -> float:
        """The step; returns the backward's seconds."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            out = self.model(inputs["query"], inputs["supports"], inputs["support_masks"], inputs["class_ids"],
                             query_label=inputs["query_label"])
        _sync(self.device)
        start = time.perf_counter()
        self.scaler.scale(out["loss"]).backward()
        _sync(self.device)
        backward = time.perf_counter() - start
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return backward

    def bare_passes(self, inputs: dict[str, torch.Tensor]) -> float:
        """Two separate bare backbone passes (query, then its support) in inference mode, as given (NCHW)."""
        self.model.eval()
        with torch.inference_mode(), autocast(self.device, self.amp):
            _sync(self.device)
            start = time.perf_counter()
            self.model.backbone(inputs["query"])
            self.model.backbone(inputs["supports"][:, 0])
            _sync(self.device)
        return time.perf_counter() - start


def loader_rate(dataset: EpisodeDataset, batch_size: int, workers: int, seconds: float) -> float:
    """Episodes/s of a DataLoader over ``dataset`` for about ``seconds``, timed after every worker delivered a batch."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=episode_collate(dataset.spec.ignore_label))
    skip, start, counted = max(1, workers), 0.0, 0
    for index, _ in enumerate(loader):
        if index + 1 == skip:
            start = time.perf_counter()
        elif index + 1 > skip:
            counted += batch_size
            if time.perf_counter() - start >= seconds:
                break
    return counted / (time.perf_counter() - start)


def synth_config(root: Path, device: torch.device, size: int, shots: int, **overrides: object) -> Config:
    return load_config(None, {
        "dataset": "synth", "data_root": str(root / "synth"), "list_root": str(root / "lists"), "backbone": "resnet50",
        "pretrained_backbone": False, "device": str(device), "train_size": size, "val_size": size, "shot": shots,
        **overrides,
    })


def print_table(rows: list[Row], device: torch.device) -> None:
    """Markdown table; every time is also given as a multiple of its row's floor."""
    cuda = device.type == "cuda"
    print("| size | shots | path | floor s | head s | measured s | overhead ratio | target | peak RSS MB (+ in call)"
          + (" | CUDA max alloc MB" if cuda else "") + " | loader 0 workers, ep/s | loader 2 workers, ep/s |")
    print("|---" * (12 + cuda) + "|")
    for row in rows:
        floor = row.median("floor")

        def timed(seconds: float) -> str:
            return f"{seconds:.2f} ({seconds / floor:.2f}x)"

        ratio, target = row.ratio(), TARGETS[row.path]
        cells = [str(row.size), str(row.shots), row.path, f"{floor:.2f}", timed(row.median("head")),
                 timed(row.median("measured")), f"{ratio:.3f}", f"<= {target} {'ok' if ratio <= target else 'ABOVE'}",
                 f"{max(row.rss):.0f} (+{max(row.growth):.0f})"]
        if cuda:
            cells.append(f"{max(row.cuda):.0f}")
        cells += [f"{rate:.1f} ({row.batch / rate / floor:.3f}x)" for rate in (row.loader[0], row.loader[2])]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast for every call")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per setting (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="473 px only, 1 repeat, short loader/test runs: a smoke run")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = QUICK_SIZES if args.quick else SIZES
    loader_seconds, test_episodes = (0.5, 2) if args.quick else (1.5, 6)
    device = resolve_device(args.device)
    check_amp(args.amp, device)
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_synth(root / "synth", SYNTH_TRAIN, SYNTH_VAL, seed=0, workers=2)
        make_lists("synth", root / "synth", root / "lists", workers=2)
        bench = Bench(synth_config(root, device, sizes[0], 1, amp=args.amp), device)
        model = bench.model

        rows = [Row(size, shots, path) for size in sizes for shots in SHOTS for path in ("eval", "train")]
        inputs = {id(row): episode_tensors(row.batch, row.shots, row.size, device, model.ignore_label) for row in rows}
        for row in rows:  # untimed warm-up
            bench.measure(Row(row.size, row.shots, row.path), inputs[id(row)])
        bench.bare_passes(inputs[id(rows[0])])
        bare = []
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        for repeat in range(repeats):
            for row in rows:
                bench.measure(row, inputs[id(row)])
                print(f"repeat {repeat + 1}/{repeats}: {row.size} px {row.shots}-shot {row.path} "
                      f"{row.measured[-1]:.2f} s (floor {row.floor[-1]:.2f} s, head {row.head[-1]:.2f} s)",
                      file=sys.stderr, flush=True)
            bare.append(bench.bare_passes(inputs[id(rows[0])]))
        share = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)

        for row in rows:
            cfg = synth_config(root, device, row.size, row.shots)
            episodes = EpisodeDataset(cfg, row.path if row.path == "train" else "val", episodes=LOADER_EPISODES)
            for workers in (0, 2):
                row.loader[workers] = loader_rate(episodes, row.batch, workers, loader_seconds)

        test_cfg = synth_config(root, device, sizes[0], 1, workers=2, test_episodes=test_episodes, test_seeds=[1],
                                test_batch_size=1, feature_reuse=False, amp=args.amp)  # the per-episode loop; bench.reuse times reuse
        bracket = Row(sizes[0], 1, "eval")  # the eval latency alone, right before and right after the loop
        bench.measure(bracket, inputs[id(rows[0])])
        start = time.perf_counter()
        run_protocol(model, test_cfg, DistContext(0, 1, device), report=lambda line: None)
        test_seconds = (time.perf_counter() - start) / test_episodes
        bench.measure(bracket, inputs[id(rows[0])])

    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nMIANet ResNet-50 on {device} ({platform.machine()}, {cores} cores, {threads} torch threads), "
          f"torch {torch.__version__}, amp {args.amp}; medians over {repeats} repeat(s) after a warm-up")
    print(f"1-min load average {load_before:.1f} before the run, {load_after:.1f} after; the model calls got "
          f"{share:.2f} CPU cores on average")
    # The CPU share the model calls actually got decides: the 1-min load average still counts jobs that
    # ended a minute ago (it read 1.1 before an idle run whose model calls got 1.94 of 2 cores).
    if device.type == "cpu" and share < 0.85 * min(cores, threads):
        print("MEASURED UNDER LOAD: other processes were using the CPU; absolute times are inflated")
    print(f"parameters: total {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M, backbone "
          f"{sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f} M (frozen), trainable "
          f"{sum(p.numel() for p in model.trainable_parameters()) / 1e6:.2f} M\n")
    print_table(rows, device)
    first = rows[0]
    print(f"\n{first.size} px 1-shot eval forward {first.median('measured'):.2f} s; two bare backbone passes "
          f"(NCHW as given, inference mode) {statistics.median(bare):.2f} s; backbone inside the forward "
          f"{first.median('floor'):.2f} s")
    alone = statistics.fmean(bracket.measured)
    test_ratio = test_seconds / alone
    print(f"test.py evaluation loop (synth, {first.size} px, 1-shot, 2 workers, {test_episodes} episodes incl. loader "
          f"start): {1 / test_seconds:.3f} episodes/s = {test_seconds:.2f} s/episode = {test_ratio:.2f}x the eval "
          f"latency alone measured just before and after it ({alone:.2f} s) (target <= {TARGETS['test']}: "
          f"{'ok' if test_ratio <= TARGETS['test'] else 'ABOVE'})")
    if not bench.memory.resettable:
        print("peak RSS: this OS cannot reset the high-water mark; each figure is the process peak so far")
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
