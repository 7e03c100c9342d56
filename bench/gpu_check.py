"""The first thing to run on a GPU machine: a few stage-1 and stage-2 iterations and an evaluation per (processes,
amp), through the entry points as a user runs them, on a tiny synth set; a table, and exit status 1 on any failure.

For 1 and 2 processes (``torchrun --standalone --nproc_per_node 2``, run as ``python -m torch.distributed.run``) and
amp off, bf16 and fp16, on a synth set ``tools.make_synth`` writes into a temporary folder (EfficientNet-Lite0,
random weights, ``SIZE`` px): ``train_base.py`` (stage 1: ``ITERATIONS`` iterations, then its validation),
``train.py`` (stage 2, from the 1-process stage-1 checkpoint of the same amp, so both process counts start from the
same weights) and ``test.py`` (the 2-process test scores the 1-process stage-2 checkpoint). Every run gets
``--config config/synth/efficientnet_lite0/split0.yaml`` and ``key value`` overrides; columns:
- it/s: training iterations per second (global batches ``STAGE1_BATCH`` / ``STAGE2_BATCH``) from the
  per-iteration times in the run's log, the first iteration excluded; test: episodes per second of the whole
  ``test.py`` command, start-up included.
- peak GPU MB: ``torch.cuda.max_memory_allocated`` at the end of each process, the largest over the processes
  (the entry points run under this module's ``--child`` mode, which only adds that read-out at exit).
- finite: every logged loss (a non-finite loss also stops the run), or the test's mIoU and FB-IoU.
- vs 1 process: the relative difference of the 2-process run's loss (averaged over the processes) from the
  1-process run's, at the first iteration (same weights, same images: at most ``FIRST_AGREEMENT``) and at any
  (``ANY_AGREEMENT``); test: the two mIoUs of the same checkpoint (equal). The training losses cannot agree
  exactly: dropout draws differ (alone they move a stage-2 loss by 1.5%, std over 12 draws), stage 1's BatchNorm
  normalises over each process's images, and one process averages the loss over all pixels of its batch, two
  processes average two per-process means. Measured on CPU, amp off: stage 1 1.2% first / 1.4% max, stage 2
  3.2% / 3.2%.

Without CUDA it says so in one line and runs the CPU rows only (1 and 2 gloo processes, amp off; float16
convolutions are slow on most CPUs), about 2 min on 2 cores; it exits 0 when they pass.

    python -m bench.gpu_check [--keep DIR]
"""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import re
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.cost import cpu_model

REPO = Path(__file__).resolve().parent.parent
CONFIG = "config/synth/efficientnet_lite0/split0.yaml"
ITERATIONS = 3
SIZE = 49
# Global batches (images or episodes per iteration, all processes together). Stage 1 needs 2 images per process:
# the BatchNorm after PSPNet's 1x1 pyramid bin cannot normalise one value per channel.
STAGE1_BATCH, STAGE2_BATCH = 4, 2
VAL_EPISODES, TEST_EPISODES = 4, 8
SYNTH_TRAIN, SYNTH_VAL = 40, 24
FIRST_AGREEMENT, ANY_AGREEMENT = 0.10, 0.25  # relative loss differences, 2 vs 1 process (module docstring)
TEST_AGREEMENT = 1e-6
TIMEOUT_S = 1800
MEMORY_ENV = "GPU_CHECK_MEMORY_FILE"
ITERATION_LINE = re.compile(r"iter (\d+)/\d+ epoch \d+ (.+) lr \S+ ([\d.]+)s/it")


@dataclass
class Row:
    """One (processes, amp, stage) line of the table; ``stage`` is ``stage 1``, ``stage 2`` or ``test``."""

    processes: int
    amp: str
    stage: str
    rate: float = math.nan
    memory_mb: float = math.nan
    finite: str = ""
    agreement: str = ""
    problems: list[str] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    miou: float = math.nan


class Check:
    """The runs of one invocation, in ``root`` (data, lists, run folders, command logs)."""

    def __init__(self, root: Path, device: str) -> None:
        self.root, self.device = root, device
        self.data, self.lists = root / "synth", root / "lists"

    def make_data(self) -> None:
        for command in (["-m", "tools.make_synth", "--root", str(self.data), "--num-train", str(SYNTH_TRAIN),
                         "--num-val", str(SYNTH_VAL), "--workers", "2"],
                        ["-m", "tools.make_lists", "--dataset", "synth", "--data-root", str(self.data),
                         "--list-root", str(self.lists), "--workers", "2"]):
            subprocess.run([sys.executable, *command], cwd=REPO, check=True, capture_output=True)

    def overrides(self, processes: int, amp: str) -> list[str]:
        amp_override = [] if amp == "off" else ["amp", amp]  # off is the default (unquoted, YAML reads it as false)
        return ["data_root", str(self.data), "list_root", str(self.lists), "device", self.device, *amp_override,
                "max_iters", str(ITERATIONS), "print_freq", "1", "workers", "0", "pretrained_backbone", "false",
                "base_train_size", str(SIZE), "base_val_size", str(SIZE), "train_size", str(SIZE), "val_size", str(SIZE),
                "base_batch_size", str(STAGE1_BATCH),
                "batch_size", str(STAGE2_BATCH), "base_val_images", str(VAL_EPISODES),
                "train_episodes", str(ITERATIONS * STAGE2_BATCH), "val_episodes", str(VAL_EPISODES),
                "test_episodes", str(TEST_EPISODES)]

    def run(self, row: Row, script: str, overrides: list[str]) -> float:
        """Run ``script`` for ``row``; returns its wall seconds; failures go to ``row.problems``."""
        name = f"{row.processes}proc_{row.amp}_{row.stage.replace(' ', '')}"
        memory_file = self.root / f"{name}.memory"
        memory_file.unlink(missing_ok=True)
        launcher = [sys.executable] if row.processes == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(row.processes)]
        command = [*launcher, "-m", "bench.gpu_check", "--child", script, "--config", CONFIG, *overrides]
        env = {**os.environ, MEMORY_ENV: str(memory_file)}
        if row.processes > 1:  # as util/launch.sh does
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // row.processes)))
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            row.problems.append(f"{script} timed out after {TIMEOUT_S} s")
            return math.nan
        seconds = time.perf_counter() - start
        (self.root / f"{name}.out").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("error:")] or [line for line in lines if "Error" in line]
            row.problems.append(f"{script} exit {done.returncode}: {(errors or lines or ['no output'])[-1].strip()}")
        peaks = [json.loads(line)["peak_mb"] for line in memory_file.read_text().splitlines()] \
            if memory_file.is_file() else []
        row.memory_mb = max(peaks, default=math.nan)
        return seconds

    def train(self, row: Row, base_dir: Path, run_dir: Path | None = None) -> None:
        """Stage 1 of ``row`` into ``base_dir``, or (``run_dir`` given) stage 2 into ``run_dir`` from ``base_dir``."""
        overrides = self.overrides(row.processes, row.amp) + ["base_exp_dir", str(base_dir)]
        if run_dir is None:
            self.run(row, "train_base.py", overrides)
            log = base_dir / "train_base.log"
        else:
            self.run(row, "train.py", overrides + ["exp_dir", str(run_dir)])
            log = run_dir / "train_meta.log"
        lines = [ITERATION_LINE.search(line) for line in log.read_text().splitlines()] if log.is_file() else []
        matches = [m for m in lines if m]
        row.losses = [{k: float(v) for k, v in zip(m[2].split()[::2], m[2].split()[1::2])} for m in matches]
        seconds = [float(m[3]) * int(m[1]) for m in matches]  # per-iteration seconds x iterations done = elapsed
        if len(seconds) >= 2 and seconds[-1] > seconds[0]:
            row.rate = (len(seconds) - 1) / (seconds[-1] - seconds[0])
        finite = all(math.isfinite(v) for losses in row.losses for v in losses.values())
        row.finite = "yes" if row.losses and finite else "NO"
        if len(row.losses) != ITERATIONS:
            row.problems.append(f"{log.name}: {len(row.losses)} of {ITERATIONS} iterations logged")
        elif not finite:
            row.problems.append(f"{log.name}: a non-finite loss")

    def test(self, row: Row, weight: Path, run_dir: Path, base_dir: Path) -> None:
        overrides = self.overrides(row.processes, row.amp) + ["base_exp_dir", str(base_dir), "exp_dir", str(run_dir),
                                                              "weight", str(weight)]
        seconds = self.run(row, "test.py", overrides)
        results = run_dir / "test" / "results.json"
        if not results.is_file():
            row.finite = "NO"
            row.problems.append(f"no {results}")
            return
        scores = json.loads(results.read_text())
        row.miou, row.rate = scores["miou"]["mean"], TEST_EPISODES / seconds
        finite = math.isfinite(row.miou) and math.isfinite(scores["fbiou"]["mean"])
        row.finite = f"mIoU {row.miou:.4f}" if finite else "NO"
        if not finite:
            row.problems.append("test: non-finite mIoU or FB-IoU")


def compare(one: Row, two: Row) -> None:
    """Fill ``two.agreement`` from the 1-process row ``one``; a difference beyond its tolerance is a problem."""
    one.agreement = "(reference)"
    if two.stage == "test":
        difference = abs(two.miou - one.miou)
        two.agreement = f"mIoU {difference:.2g} apart"
        if not difference <= TEST_AGREEMENT:
            two.problems.append(f"2 vs 1 process: {two.agreement} (same checkpoint; at most {TEST_AGREEMENT:g})")
        return
    relative = [abs(b["loss"] - a["loss"]) / abs(a["loss"]) for a, b in zip(one.losses, two.losses)]
    if not relative:
        two.agreement = "no losses"
        return
    two.agreement = f"{100 * relative[0]:.1f}% first, {100 * max(relative):.1f}% max"
    if not (relative[0] <= FIRST_AGREEMENT and max(relative) <= ANY_AGREEMENT):
        two.problems.append(f"2 vs 1 process: loss {two.agreement} apart (at most {100 * FIRST_AGREEMENT:g}% at the "
                            f"first iteration, {100 * ANY_AGREEMENT:g}% at any)")


def check(root: Path, device: str, settings: list[tuple[int, str]]) -> list[Row]:
    runner = Check(root, device)
    runner.make_data()
    rows: list[Row] = []
    for processes, amp in settings:
        stage1, stage2, test = (Row(processes, amp, stage) for stage in ("stage 1", "stage 2", "test"))
        run_dir, base_of_one = root / f"{processes}proc_{amp}", root / f"1proc_{amp}" / "base"
        runner.train(stage1, run_dir / "base")
        runner.train(stage2, base_of_one, run_dir / "meta")
        runner.test(test, root / f"1proc_{amp}" / "meta" / "best.pth", run_dir / "meta", base_of_one)
        for row in (stage1, stage2, test):
            rows.append(row)
            reference = next((r for r in rows if r.processes == 1 and r.amp == amp and r.stage == row.stage), None)
            if processes > 1 and reference is not None:
                compare(reference, row)
            print(f"{processes} process(es), amp {amp}, {row.stage}: {'; '.join(row.problems) or 'ok'}",
                  file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[Row]) -> None:
    print("| processes | amp | stage | it/s | peak GPU MB | finite | vs 1 process | status |")
    print("|---" * 8 + "|")
    for row in rows:
        unit = " ep/s" if row.stage == "test" else ""
        memory = "n/a" if math.isnan(row.memory_mb) else f"{row.memory_mb:.0f}"
        status = "FAIL: " + "; ".join(row.problems) if row.problems else "ok"
        print(f"| {row.processes} | {row.amp} | {row.stage} | {row.rate:.2f}{unit} | {memory} | {row.finite} | "
              f"{row.agreement or '-'} | {status} |")


def settings_for(cuda: bool) -> tuple[list[tuple[int, str]], list[str]]:
    """The (processes, amp) runs and the notes on what is left out."""
    if not cuda:
        return [(1, "off"), (2, "off")], []
    notes = []
    amps = ["off", "bf16", "fp16"]
    if not torch.cuda.is_bf16_supported():
        amps.remove("bf16")
        notes.append(f"bf16 left out: {torch.cuda.get_device_name()} does not support it")
    counts = [1, 2]
    if torch.cuda.device_count() < 2:
        counts = [1]
        notes.append("2-process rows left out: they need 2 CUDA devices (one per process)")
    return [(p, amp) for p in counts for amp in amps], notes


def child(script: str, args: list[str]) -> None:
    """Run entry point ``script`` with ``args`` as ``python script args`` would, and at exit append this process's
    CUDA max allocated memory to the file named by ``GPU_CHECK_MEMORY_FILE``."""
    def record() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            with open(os.environ[MEMORY_ENV], "a") as handle:
                handle.write(json.dumps({"peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20}) + "\n")

    atexit.register(record)
    sys.argv = [script, *args]
    sys.path.insert(0, str(REPO))
    runpy.run_path(str(REPO / script), run_name="__main__")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", default=None, help="a new or empty folder: write the runs (data, logs, checkpoints) "
                                                     "there and keep them")
    args = parser.parse_args()
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        parser.error(f"--keep {args.keep}: the folder is not empty; give a new or empty one")
    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device here: running the CPU rows only (1 and 2 processes, amp off)")
    settings, notes = settings_for(cuda)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        root = Path(args.keep) if args.keep else Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        rows = check(root, "cuda" if cuda else "cpu", settings)
    where = torch.cuda.get_device_name() if cuda else cpu_model()
    print(f"\n{where}; torch {torch.__version__}; EfficientNet-Lite0, {SIZE} px, global batch {STAGE1_BATCH} (stage 1) "
          f"/ {STAGE2_BATCH} (stage 2), {ITERATIONS} iterations per stage, {TEST_EPISODES} test episodes; "
          f"{time.perf_counter() - started:.0f} s")
    for note in notes:
        print(note)
    print()
    print_table(rows)
    failed = [row for row in rows if row.problems]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rows ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
