"""The synth ablation of MIANet's two modules: every row x training seed as its own stage-2 run and test, through
the real entry points, with one record per run (the tables made from the records: :mod:`util.reports.ablation`).

Command line: ``python -m bench.ablation`` (:mod:`bench.ablation`).

- Rows (:data:`ROWS`): what each adds to the demo's command (``use_gim false``, ``use_hpm false``,
  ``prior_scale 1``); ``both`` adds nothing, so its seed-123 run is ``bash demo.sh``'s run.
- Stage 1: one for every run, the demo's (``initmodel/synth/split0/efficientnet_lite0``; train_base.py trains it
  when it is not there). A plan with schedule ``overrides`` trains its own in ``<exp root>/stage1`` unless the
  overrides name ``base_exp_dir`` or ``base_weight``.
- A run: ``python train.py --config <demo config> shot 1 <row> seed S exp_dir <exp root>/<row>/seed<S> resume auto``,
  then ``python test.py`` with the same overrides; their output goes to ``<run dir>/ablation.log``.
- Record: ``<results dir>/<row>_seed<S>.json``, the run's ``results.json`` with its resolved config, the two
  commands, the wall time of its entry-point processes, the CPU model, the torch thread count the entry points
  inherit (``OMP_NUM_THREADS``, else one per core: it changes the order of float sums) and the code version.
- Resumable: a run whose record holds the same resolved config is skipped; a finished run without a record is
  only recorded; an interrupted one continues (``resume auto``). A record or run folder of another config stops
  the plan with one line: nothing is replaced.

Relative paths (results folder, exp root, config) are relative to the repository root, where the entry points run.
"""
from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import yaml

from util import REPO as ROOT
from util.common.atomic import write_bytes_atomic
from util.common.config import Config, load_config
from util.common.errors import EXIT_INTERRUPTED, UserError
from util.common.runtime import cpu_model
from util.runs.checkpoint import BEST, LAST, run_record
from util.runs.folders import RESULTS_FILE, base_run_dir
from util.runs.guard import stage1_done

REPO = ROOT
DEMO_CONFIG = "config/synth/efficientnet_lite0/split0.yaml"
DEMO_SHOT = 1
DEFAULT_SEEDS = (123, 124, 125)
RESULTS_DIR = Path("docs/results/ablation")
EXP_ROOT = Path("exp/ablation")
STAGE1_RECORD = "stage1.json"
RUN_LOG = "ablation.log"
TIME_FILE = "ablation_time.json"
ENTRY_POINTS: dict[str, tuple[str, ...]] = {"train_base": ("train_base.py",), "train": ("train.py",),
                                            "test": ("test.py",)}
PLAN_KEYS = ("shot", "seed", "exp_dir", "resume")
"""Keys the plan sets for every run; ``--overrides`` may not set them."""
UNRECORDED_KEYS = ("resume", "overwrite", "workers", "print_freq", "vis")
"""Config keys that do not change a run's numbers (loader workers give identical episodes, tested), left out of the
config a record keeps and compares."""
LOG_TAIL = 5


@dataclass(frozen=True)
class Row:
    """One ablation row: its ``name`` (file names), ``label`` (tables) and what it adds to the demo's command."""

    name: str
    label: str
    overrides: tuple[str, ...]


ROWS = (
    Row("none", "without GIM and HPM", ("use_gim", "false", "use_hpm", "false")),
    Row("gim", "GIM only", ("use_hpm", "false")),
    Row("hpm", "HPM only", ("use_gim", "false")),
    Row("both", "MIANet: GIM + HPM (the demo)", ()),
    Row("both_prior1", "GIM + HPM at the reference's prior weight", ("prior_scale", "1")),
)
ROWS_BY_NAME = {row.name: row for row in ROWS}


@dataclass(frozen=True)
class Plan:
    """Which runs to make and where: ``rows`` x ``seeds``, records in ``results_dir``, run folders under
    ``exp_root``; ``overrides`` change the demo's schedule for stage 1 and every run; ``entry_points`` are the
    argument lists after the Python executable that run stage 1, stage 2 and the test."""

    rows: tuple[Row, ...] = ROWS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    results_dir: Path = RESULTS_DIR
    exp_root: Path = EXP_ROOT
    overrides: tuple[str, ...] = ()
    config_file: str = DEMO_CONFIG
    entry_points: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(ENTRY_POINTS))
    repo: Path = REPO

    def path(self, path: str | Path) -> Path:
        """``path`` as the runner opens it (relative paths are relative to the repository)."""
        return self.repo / path

    def stage1_overrides(self) -> tuple[str, ...]:
        """Where stage 1 lives: the demo's for the demo schedule, ``<exp root>/stage1`` for a plan with overrides
        (unless they name ``base_exp_dir`` or ``base_weight``)."""
        if not self.overrides or {"base_exp_dir", "base_weight"} & set(self.overrides[::2]):
            return ()
        return ("base_exp_dir", str(self.exp_root / "stage1"))

    def run_dir(self, row: Row, seed: int) -> Path:
        return self.exp_root / row.name / f"seed{seed}"

    def record_path(self, row: Row, seed: int) -> Path:
        return self.path(self.results_dir) / f"{row.name}_seed{seed}.json"

    def run_overrides(self, row: Row, seed: int) -> list[str]:
        """The ``key value`` overrides of one run's train.py and test.py (train.py adds ``resume auto``)."""
        return ["shot", str(DEMO_SHOT), *self.overrides, *self.stage1_overrides(), *row.overrides,
                "seed", str(seed), "exp_dir", str(self.run_dir(row, seed))]

    def command(self, entry: str, overrides: Sequence[str]) -> list[str]:
        """The argument list after the Python executable that runs ``entry`` with ``overrides``."""
        return [*self.entry_points[entry], "--config", self.config_file, *overrides]


def check_plan(plan: Plan) -> None:
    """Refuse, before anything runs, overrides the plan sets itself or the config rejects, and schedule overrides
    aimed at the committed results folder."""
    if len(plan.overrides) % 2:
        raise UserError(f"--overrides takes key value pairs; got {len(plan.overrides)} words")
    managed = [key for key in plan.overrides[::2] if key in PLAN_KEYS]
    if managed:
        raise UserError(f"--overrides sets {', '.join(managed)}, which the ablation sets for every run "
                        "(--seeds for the seed, --exp-root for the run folders); leave it out")
    if plan.overrides and plan.path(plan.results_dir).resolve() == plan.path(RESULTS_DIR).resolve():
        raise UserError(f"--overrides change the demo's schedule, but {RESULTS_DIR} holds the demo schedule's "
                        "records: give --results-dir and --exp-root folders of their own")
    if not plan.rows or not plan.seeds:
        raise UserError("the plan has no runs: give at least one row (--rows) and one seed (--seeds)")
    load_config(plan.path(plan.config_file), [*plan.overrides, *plan.stage1_overrides()])


def recorded_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config a record keeps and compares: every key but :data:`UNRECORDED_KEYS`."""
    return {key: value for key, value in cfg.items() if key not in UNRECORDED_KEYS}


def _without_folder(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without ``exp_dir``: where a run was made does not change its numbers."""
    return {key: value for key, value in config.items() if key != "exp_dir"}


def config_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any], limit: int = 3) -> str:
    """``key recorded (now wanted)`` for the first ``limit`` keys that differ."""
    keys = [key for key in dict.fromkeys([*recorded, *wanted]) if recorded.get(key) != wanted.get(key)]
    text = ", ".join(f"{key} {recorded.get(key)!r} (now {wanted.get(key)!r})" for key in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def source_version(repo: Path = REPO) -> str:
    """The commit the code runs at (12 hex digits), ``+modified`` when tracked files other than Markdown and the
    results folder differ from it; ``unknown`` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)*.md",
                      f":(exclude){RESULTS_DIR.parent}")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+modified" if changed else "")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing or not whole (e.g. cut off by a crash)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_yaml_config(path: Path) -> dict[str, Any] | None:
    """A run's saved ``config.yaml`` (None when missing or unreadable)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (FileNotFoundError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def scores_text(results: Mapping[str, Any]) -> str:
    return f"mIoU {100 * results['miou']['mean']:.2f}, FB-IoU {100 * results['fbiou']['mean']:.2f}"


class RunFailed(UserError):
    """An entry point of a run exited with an error; an interrupted one (Ctrl-C, SIGTERM) exits 130."""

    def __init__(self, message: str, interrupted: bool = False):
        super().__init__(message)
        if interrupted:
            self.exit_code = EXIT_INTERRUPTED


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so a scheduler's stop reaches the running entry point as one SIGINT."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_logged(command: Sequence[str], log_path: Path, cwd: Path) -> int:
    """Run ``command`` with its output appended to ``log_path``; its exit code. The process has its own session, so
    a Ctrl-C here reaches it exactly once, forwarded as SIGINT, and it is waited for (it saves ``last.pth``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            process.wait()
            raise


def _log_tail(log_path: Path) -> list[str]:
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    return [f"    {line}" for line in lines[-LOG_TAIL:]]


class Runner:
    """Carries out a :class:`Plan`; ``report`` gets the progress lines (one per run, one for stage 1)."""

    def __init__(self, plan: Plan, report: Callable[[str], None] = print) -> None:
        self.plan, self.report = plan, report
        self.stage1_checked = False
        self.version = source_version(plan.repo)
        self.cpu = cpu_model()
        self.threads = torch.get_num_threads()  # the entry points inherit the environment that sets it

    # ---------------------------------------------------------------- entry points

    def _execute(self, entry: str, overrides: Sequence[str], log_path: Path, what: str) -> float:
        """Run an entry point; its wall seconds. A non-zero exit raises :class:`RunFailed` after the log's tail."""
        start = time.perf_counter()
        try:
            code = run_logged([sys.executable, *self.plan.command(entry, overrides)], log_path, self.plan.repo)
        except KeyboardInterrupt:
            raise RunFailed(f"{what}: interrupted; run the same command again to continue it (log: {log_path})",
                            interrupted=True) from None
        seconds = time.perf_counter() - start
        if code != 0:
            self.report(f"{what}: FAILED after {seconds:.0f} s ({entry} exited with {code}); the end of {log_path}:")
            for line in _log_tail(log_path):
                self.report(line)
            raise RunFailed(f"{what}: {entry} exited with {code}; see {log_path}, then run the same command again",
                            interrupted=code in (EXIT_INTERRUPTED, 128 + signal.SIGTERM))
        return seconds

    def ensure_stage1(self) -> None:
        """Train the shared stage 1 unless it is done (train.sh's rule), once per plan; record it when a
        checkpoint exists."""
        if self.stage1_checked:
            return
        self.stage1_checked = True
        plan = self.plan
        overrides = [*plan.overrides, *plan.stage1_overrides()]
        cfg = load_config(plan.path(plan.config_file), [*overrides, "resume", "auto"])
        located = cfg.copy()  # the stage-1 folder and base weight as this process opens them
        located.base_exp_dir = str(plan.path(base_run_dir(cfg)))
        located.base_weight = cfg.base_weight and str(plan.path(cfg.base_weight))
        done = stage1_done(located)
        if done is not None:
            self.report(f"stage 1: done ({done}), shared by every run")
            seconds = None
        else:
            seconds = self._execute("train_base", [*overrides, "resume", "auto"],
                                    plan.path(plan.exp_root) / "stage1.log", "stage 1")
            self.report(f"stage 1: trained in {seconds:.0f} s")
        self._record_stage1(cfg, overrides, seconds)

    def _record_stage1(self, cfg: Config, overrides: Sequence[str], seconds: float | None) -> None:
        path = self.plan.path(self.plan.results_dir) / STAGE1_RECORD
        best = self.plan.path(base_run_dir(cfg)) / BEST
        if not best.is_file() or (seconds is None and path.is_file()):
            return
        record = run_record(best)
        write_json(path, {
            "base_class_miou": (record.get("best") or {}).get("miou"),
            "iteration": record.get("iteration"),
            "checkpoint": str(base_run_dir(cfg) / BEST),
            "command": "python " + shlex.join(self.plan.command("train_base", [*overrides, "resume", "auto"])),
            "config": recorded_config(cfg),
            "wall_time_s": None if seconds is None else round(seconds, 1),
            "cpu_model": self.cpu,
            "torch_threads": None if seconds is None else self.threads,
            "code_version": self.version,
        })

    # ---------------------------------------------------------------- runs

    def run(self) -> list[Path]:
        """Every run of the plan, in row-major order; the record files."""
        plan = self.plan
        runs = [(row, seed) for row in plan.rows for seed in plan.seeds]
        paths = []
        with _sigterm_as_interrupt():
            for index, (row, seed) in enumerate(runs, 1):
                paths.append(self.run_one(row, seed, f"[{index}/{len(runs)}] {row.name} seed {seed}"))
        return paths

    def run_one(self, row: Row, seed: int, what: str) -> Path:
        """One run: skipped when recorded, recorded when finished, else trained (or continued) and tested."""
        plan = self.plan
        overrides = plan.run_overrides(row, seed)
        wanted = recorded_config(load_config(plan.path(plan.config_file), overrides))
        record_path = plan.record_path(row, seed)
        record = read_json(record_path) if record_path.is_file() else None
        if record_path.is_file():
            recorded = _without_folder(record.get("config") or {}) if record else {}
            if record is None or recorded != _without_folder(wanted):
                why = "is not a whole JSON record" if record is None else \
                    f"was made with another config: {config_differences(recorded, _without_folder(wanted))}"
                raise UserError(f"{record_path} {why}; move it away or give another --results-dir")
            self.report(f"{what}: skipped, recorded in {record_path} ({scores_text(record['results'])})")
            return record_path
        run_dir = plan.path(plan.run_dir(row, seed))
        results = self._finished_results(run_dir, wanted)
        if results is not None:
            status = "recorded from the finished run in"
        else:
            self._check_run_dir(run_dir, wanted)
            self.ensure_stage1()
            self._train_and_test(run_dir, overrides, what)
            results = self._finished_results(run_dir, wanted)
            if results is None:
                raise UserError(f"{what}: test.py ended without writing {run_dir / 'test' / RESULTS_FILE}")
            status = "done in"
        times = read_json(run_dir / TIME_FILE) or {}
        wall = None if not times.get("complete") else \
            {"stage2": round(times.get("stage2", 0.0), 1), "test": round(times.get("test", 0.0), 1)}
        write_json(record_path, {
            "row": row.name,
            "seed": seed,
            "row_overrides": list(row.overrides),
            "commands": ["python " + shlex.join(plan.command("train", [*overrides, "resume", "auto"])),
                         "python " + shlex.join(plan.command("test", overrides))],
            "config": wanted,
            "wall_time_s": wall,
            "cpu_model": self.cpu,
            "torch_threads": self.threads if wall and status == "done in" else None,  # None: not all run by us
            "code_version": self.version,
            "results": results,
        })
        took = f" {wall['stage2'] + wall['test']:.0f} s" if wall and status == "done in" else ""
        where = f" {run_dir}" if status != "done in" else ""
        self.report(f"{what}: {status}{took}{where} ({scores_text(results)})")
        return record_path

    def _finished_results(self, run_dir: Path, wanted: Mapping[str, Any]) -> dict[str, Any] | None:
        """The run's test results when they are whole and were made with ``wanted``; a test of another config in
        the run folder stops the plan."""
        results = read_json(run_dir / "test" / RESULTS_FILE)
        tested = read_yaml_config(run_dir / "test" / "config.yaml")
        if results is None or tested is None:
            return None
        if recorded_config(tested) != wanted:
            raise UserError(f"{run_dir} holds a test of another config "
                            f"({config_differences(recorded_config(tested), wanted)}); move the folder away or give "
                            "another --exp-root")
        return results

    def _check_run_dir(self, run_dir: Path, wanted: Mapping[str, Any]) -> None:
        """Refuse to continue a stage-2 run of another config (train.py would skip it as finished)."""
        trained = read_yaml_config(run_dir / "config.yaml")
        if trained is not None and recorded_config(trained) != wanted:
            raise UserError(f"{run_dir} holds a stage-2 run of another config "
                            f"({config_differences(recorded_config(trained), wanted)}); move the folder away or "
                            "give another --exp-root")

    def _train_and_test(self, run_dir: Path, overrides: Sequence[str], what: str) -> None:
        """train.py (``resume auto``) then test.py; their wall seconds add up in ``<run dir>/ablation_time.json``
        (``complete``: the runner saw the run from its first iteration)."""
        time_file = run_dir / TIME_FILE
        times = read_json(time_file)
        if times is None:
            times = {"stage2": 0.0, "test": 0.0,
                     "complete": not ((run_dir / LAST).is_file() or (run_dir / BEST).is_file())}
        log_path = run_dir / RUN_LOG
        for entry, key, args in (("train", "stage2", [*overrides, "resume", "auto"]), ("test", "test", overrides)):
            start = time.perf_counter()
            try:
                self._execute(entry, args, log_path, what)
            finally:
                times[key] += time.perf_counter() - start
                write_json(time_file, times)


def run_plan(plan: Plan, report: Callable[[str], None] = print) -> list[Path]:
    """Check ``plan`` and carry it out (:class:`Runner`); the record files of its runs."""
    check_plan(plan)
    return Runner(plan, report).run()


def parse_rows(names: Sequence[str]) -> tuple[Row, ...]:
    """The rows named, in :data:`ROWS` order."""
    unknown = [name for name in names if name not in ROWS_BY_NAME]
    if unknown:
        raise UserError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROWS_BY_NAME)}")
    return tuple(row for row in ROWS if row.name in names)


def demo_config(overrides: Sequence[str] = ()) -> Config:
    """The config ``bash demo.sh [key value ...]`` trains and tests (train.sh/test.sh add ``shot 1``)."""
    return load_config(REPO / DEMO_CONFIG, ["shot", str(DEMO_SHOT), *overrides])
