"""The one training loop, used by stage 1 (train_base.py) and stage 2 (train.py).

SGD with momentum, poly learning rate stepped per iteration, optional autocast (bf16/fp16, GradScaler
for fp16), DDP when run under torchrun, tqdm bars, tensorboardX scalars and a log file per run.

Batch sizes are global: with N processes each takes ``batch / N`` of every batch, so the iterations, the
learning-rate schedule and the batches themselves (the same images per iteration) do not depend on N.

Resumability: the data order of epoch e is a pure function of (seed, e) (:class:`EpochSampler`) and
the dataset of epoch e comes from ``make_train_set(e)`` whose items are pure functions of their index,
so a run resumed from a checkpoint skips the iterations already done in that epoch and then sees
exactly the batches, dropout draws (every rank's restored RNG states) and learning rates of an uninterrupted run.
Resumable checkpoints (``last.pth``) are written every ``checkpoint_interval`` iterations, at the end of every
epoch before its validation (a run resumed there validates first) and when a stop signal arrives; ``best.pth``
(what inference needs, without the training state) whenever the validation score improves. Both are marked
``finished`` at the end of the schedule. A step does not wait for the device: the losses are read (and checked
to be finite) every ``print_freq`` iterations and before every save, so a non-finite loss still stops the run
before it reaches a checkpoint. What protects the user's files (lock, overwrite rule, finished stages, stop
signals) is in :mod:`util.runs.guard`.
"""
from __future__ import annotations

import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from util.common.cli import config_from_cli
from util.common.config import Config
from util.common.errors import UserError
from util.common.distributed import (
    DistContext,
    EpochSampler,
    all_reduce_first,
    all_reduce_mean,
    barrier,
    data_parallel,
    gather_to_main,
    init_distributed,
    shutdown_distributed,
)
from util.common.runtime import (
    autocast,
    check_amp,
    configure_device,
    grad_scaler,
    restore_rng_state,
    rng_state,
    seed_everything,
    to_device,
)
from util.runs.checkpoint import (
    BEST,
    LAST,
    RUN_DIR_KEYS,
    TRAINING_STATE_KEYS,
    describe_identity,
    inference_state,
    load_checkpoint,
    load_model_state,
    run_record,
    save_atomic,
)
from util.runs.guard import (
    RunInterrupted,
    StartPoint,
    StopNow,
    StopRequest,
    plan_start,
    run_dir_lock,
    skip_message,
    worker_signals,
)
from util.runs.log import RunLog


class TrainingDiverged(UserError):
    """The loss (or the weights) stopped being finite; the last good checkpoint is left as it was."""


@dataclass
class Schedule:
    """How long and how fast: epochs, the GLOBAL batch size (split over the processes; ``batch_key`` is the config
    key that sets it), learning rate, optional iteration cap."""

    epochs: int
    batch_size: int
    lr: float
    max_iters: int = 0
    batch_key: str = "batch_size"


@dataclass(frozen=True)
class LoopOptions:
    """The training settings the loop reads (config keys of the same names, see config/base.yaml), taken from the
    config once by :meth:`from_config`."""

    momentum: float
    weight_decay: float
    power: float
    amp: str
    seed: int
    workers: int
    print_freq: int
    checkpoint_interval: int
    val_interval: int
    resume: str | None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "LoopOptions":
        return cls(**{option.name: cfg[option.name] for option in fields(cls)})


@dataclass
class TrainJob:
    """What differs between the stages; the loop in :func:`train` is the same for both.

    ``parameters`` are the tensors to optimise at ``schedule.lr``, or SGD parameter groups (dicts with
    ``params`` and their own ``lr``); the poly schedule scales every group's rate alike.
    ``step(model, batch)`` runs the forward pass of one batch (already on the device) and returns a dict
    of named losses including ``"loss"`` (the one minimised). ``validate(model)`` returns metrics whose
    ``"miou"`` selects ``best.pth`` (it is called on every rank; it reduces over ranks itself).
    ``stop_patience`` > 0 ends the run at the start of an epoch once that many epochs have passed
    since the best validation (the poly schedule still spans all epochs).
    ``identity`` is what defines the trained model (:func:`util.runs.checkpoint.run_identity`, plus provenance such
    as ``base_weight``); every checkpoint stores it, and the run directory's checkpoints must agree with it.
    ``record`` entries are saved in every checkpoint (e.g. where the backbone's weights came from) and a resumed
    run must have the same; ``notices`` are logged when the run starts and again when it ends (e.g. a warning that
    the backbone started from random weights).
    """

    stage: str
    model: nn.Module
    parameters: list[nn.Parameter] | list[dict[str, Any]]
    make_train_set: Callable[[int], Dataset]
    step: Callable[[nn.Module, dict], Mapping[str, torch.Tensor]]
    run_dir: Path
    schedule: Schedule
    identity: dict[str, Any]
    validate: Callable[[nn.Module], dict[str, float]] | None = None
    collate: Callable[[list], Any] | None = None
    stop_patience: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    iteration: int
    best: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)


class _EpochItems(Dataset):
    """Item ``(epoch, index)`` is item ``index`` of ``make_train_set(epoch)``, built once per epoch in each process
    that reads it: the training loader and its workers serve every epoch (:class:`util.common.distributed.EpochSampler`
    yields these keys)."""

    def __init__(self, make_train_set: Callable[[int], Dataset]):
        self.make_train_set = make_train_set
        self.epoch: int | None = None
        self.items: Dataset | None = None

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self.epoch:
            self.items, self.epoch = self.make_train_set(epoch), epoch
        return self.items[index]


def per_process_batch(batch_size: int, batch_key: str, ctx: DistContext) -> int:
    """The share of a global batch each of ``ctx.world_size`` processes takes; a batch that does not divide is a
    :class:`UserError` naming ``batch_key``."""
    if batch_size % ctx.world_size:
        raise UserError(f"config key '{batch_key}' is the global batch ({batch_size}), split over the "
                        f"{ctx.world_size} processes: it must be a multiple of {ctx.world_size}; choose such a batch or "
                        f"a process count (NPROC) that divides {batch_size}")
    return batch_size // ctx.world_size


def _check_finite_weights(job: TrainJob, iteration: int, amp: str) -> None:
    tensors = (p for entry in job.parameters for p in (entry["params"] if isinstance(entry, dict) else [entry]))
    if not all(bool(torch.isfinite(p).all()) for p in tensors):
        raise TrainingDiverged(f"weights stopped being finite at iteration {iteration}; " + _last_good(job.run_dir, amp))


def _last_good(run_dir: Path, amp: str) -> str:
    fix = f"set amp off (the run used amp {amp})" if amp != "off" else "lower the learning rate"
    if (run_dir / LAST).is_file():
        return f"the last good checkpoint ({run_dir / LAST}) is intact: {fix}, then resume"
    return f"no checkpoint had been written yet: {fix} and start again"


PEER_FAILURE_MARKS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "Gloo", "NCCL",
                      "Timed out", "timed out")
"""Words of the errors torch.distributed raises in a rank whose peer process died or stopped answering."""


def _a_peer_failed(err: Exception) -> bool:
    return isinstance(err, torch.distributed.DistError) or (
        isinstance(err, RuntimeError) and any(mark in str(err) for mark in PEER_FAILURE_MARKS))


def _peer_failure(err: Exception, run_dir: Path) -> UserError:
    """The one line a rank prints when another process of its run died: what happened and how the run continues."""
    last = run_dir / LAST
    kept = f"{last} holds iteration {run_record(last)['iteration']}" if last.is_file() else "no checkpoint was saved yet"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"another process of this run stopped ({type(err).__name__}: {first[:160]}); {kept}: run the "
                     "same command again to continue (resume auto; train.sh does)")


def _skip_finished(job: TrainJob, done: Path, ctx: DistContext) -> TrainResult:
    """A finished stage under ``resume auto``: say so and change nothing (the result is read from ``last.pth``, which
    holds where the run ended, when it exists)."""
    if ctx.is_main:
        print(skip_message(job.stage, done), file=sys.stderr)
    last = job.run_dir / LAST
    record = run_record(last if last.is_file() else done)
    best = record.get("best") or {}
    return TrainResult(iteration=record.get("iteration") or 0, best=best, last_metrics=best.get("metrics", {}))


def _mark_finished(path: Path, best: dict[str, Any]) -> None:
    """Flag a checkpoint written before the schedule ended (``best.pth``; ``last.pth``, saved before the last
    validation) as belonging to a finished run; ``last.pth`` also takes the final ``best`` record."""
    if not path.is_file():
        return
    record = run_record(path)
    update = {"finished": True} | ({"best": best} if path.name == LAST else {})
    if any(record.get(key) != value for key, value in update.items()):
        save_atomic(load_checkpoint(path) | update, path)


def train(cfg: Mapping[str, Any], job: TrainJob, ctx: DistContext) -> TrainResult:
    """Run (or resume, per ``cfg.resume``) a training job to the end of its schedule.

    Holds the run directory's lock, refuses to replace checkpoints another run wrote (``cfg.overwrite``),
    does nothing for a stage already finished (``resume auto``), refuses to continue a run under other settings
    (:func:`util.runs.guard.plan_start`), and on SIGINT/SIGTERM/SIGHUP saves ``last.pth`` at the current iteration and
    raises :class:`RunInterrupted`. Until the start is decided (and a resumed state loaded) nothing is written in the
    run directory but its lock; then the resolved config goes to ``config.yaml`` and the log opens.
    """
    with run_dir_lock(job.run_dir, ctx, RUN_DIR_KEYS.get(job.stage, "exp_dir")) as lock:
        start = plan_start(cfg, job.stage, job.run_dir, job.identity, job.record)
        if start.finished is not None:
            return _skip_finished(job, start.finished, ctx)
        run = _Run(job, LoopOptions.from_config(cfg), cfg, ctx, start)
        resumed = run.restore()
        if ctx.is_main:
            cfg.save(job.run_dir / "config.yaml", header=run.describe_processes())
        run.log = RunLog(job.run_dir, f"train_{job.stage}", enabled=ctx.is_main)
        try:
            if lock is not None and lock.taken_over:
                run.log.info(lock.taken_over)
            if resumed:
                run.log.info(f"resumed from {start.source} at iteration {run.iteration}/{run.total}")
            elif cfg["resume"] == "auto":
                run.log.info(f"resume auto: no {LAST} in {job.run_dir}, starting fresh")
            with StopRequest() as stop:
                run.stop = stop
                try:
                    return run.run()
                except Exception as err:
                    if ctx.world_size > 1 and _a_peer_failed(err):
                        raise _peer_failure(err, job.run_dir) from None
                    raise
        finally:
            run.log.close()


def train_from_cli(argv: Sequence[str] | None, description: str,
                   build_job: Callable[[Config, DistContext], TrainJob], batch_key: str) -> TrainResult:
    """An entry point's whole run: config from the command line, distributed set-up (the global batch ``batch_key``
    must divide over the processes: checked before any work), seeding, :func:`train`."""
    cfg = config_from_cli(argv, description)
    ctx = init_distributed(cfg.device)
    try:
        per_process_batch(cfg[batch_key], batch_key, ctx)
        check_amp(cfg.amp, ctx.device)
        configure_device(ctx.device)
        seed_everything(cfg.seed, ctx.rank)
        return train(cfg, build_job(cfg, ctx), ctx)
    finally:
        shutdown_distributed()


class _Run:
    """One run of a :class:`TrainJob`: the optimiser, the schedule's position and the best score, and the steps of
    the loop (:meth:`run`). ``cfg`` is only recorded in the checkpoints; the loop reads ``options``."""

    def __init__(self, job: TrainJob, options: LoopOptions, cfg: Mapping[str, Any], ctx: DistContext,
                 start: StartPoint) -> None:
        self.job, self.options, self.cfg, self.ctx, self.start = job, options, cfg, ctx, start
        self.log: RunLog | None = None  # opened by train() once the start is decided
        self.stop: StopRequest | None = None
        schedule = job.schedule
        self.batch = per_process_batch(schedule.batch_size, schedule.batch_key, ctx)
        self.model = job.model.to(ctx.device)
        self.optimizer = torch.optim.SGD(job.parameters, lr=schedule.lr, momentum=options.momentum,
                                         weight_decay=options.weight_decay)
        self.train_set = job.make_train_set(0)
        self.iters_per_epoch = len(self.train_set) // schedule.batch_size
        if self.iters_per_epoch == 0:
            raise UserError(
                f"{len(self.train_set)} training items cannot fill one batch of {schedule.batch_size} (config key "
                f"'{schedule.batch_key}'); lower the batch size or add data"
            )
        self.total = schedule.epochs * self.iters_per_epoch
        if schedule.max_iters > 0:
            self.total = min(self.total, schedule.max_iters)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=self.total, power=options.power)
        self.scaler = grad_scaler(ctx.device, options.amp)
        self.iteration = 0
        self.best: dict[str, Any] = {"miou": -math.inf, "iteration": -1, "metrics": {}}
        self.last_metrics: dict[str, float] = {}
        self.validation_due = False  # a resumed run whose last epoch ended before its validation ran
        self.sampler = EpochSampler(len(self.train_set), 0, options.seed, ctx)
        self.loader: DataLoader | None = None
        self.step_model = self.model
        self.losses: dict[str, torch.Tensor] = {}
        self.first_bad = torch.zeros((), dtype=torch.int64, device=ctx.device)  # first non-finite iteration (0: none)
        self.bad_loss = torch.zeros((), device=ctx.device)  # the loss at that iteration

    @property
    def epoch(self) -> int:
        return self.iteration // self.iters_per_epoch

    def describe_processes(self) -> str:
        """``2 processes x 2 = global batch 4`` for the logs and config.yaml."""
        return (f"{self.ctx.world_size} process(es) x {self.batch} = global batch {self.job.schedule.batch_size} "
                f"(config key {self.job.schedule.batch_key})")

    def restore(self) -> bool:
        """Load ``start.source`` (model, optimiser, schedule, scaler, this rank's RNG states) if there is one; True if
        it did. Writes nothing: a checkpoint this run cannot continue is refused here, before the run directory
        changes."""
        source, job, ctx = self.start.source, self.job, self.ctx
        if source is not None:
            state = load_checkpoint(source)
            if any(key not in state for key in TRAINING_STATE_KEYS):
                raise UserError(f"checkpoint {source} holds no training state to resume from (a {BEST} keeps only what "
                                f"inference needs); resume from the {LAST} of that run, or set resume null")
            order = state.get("data_order", {})
            if state.get("stage") != job.stage or order.get("iters_per_epoch") != self.iters_per_epoch:
                raise UserError(
                    f"checkpoint {source} is an unfinished run (stage {state.get('stage')}, {order.get('iters_per_epoch')} "
                    f"iterations per epoch) that this run (stage {job.stage}, {self.iters_per_epoch} iterations per "
                    "epoch) cannot continue: continuing needs the same stage, global batch and episodes (a finished "
                    "run is skipped whatever they are); run it as before, or start over with resume null overwrite true"
                )
            if order.get("world_size", 1) != ctx.world_size:
                raise UserError(
                    f"checkpoint {source} was trained by {order.get('world_size')} process(es), this run has "
                    f"{ctx.world_size}: continue it with NPROC={order.get('world_size')} (the global batch, the "
                    "iterations and the schedule do not depend on the process count, each process's random state does)")
            load_model_state(self.model, state["model"], source)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.best = state["iteration"], state["best"]
            self.last_metrics = self.best.get("metrics", {})
            self.validation_due = state.get("validated") is False
            rng = state["rng"]
            restore_rng_state(rng[ctx.rank] if isinstance(rng, list) else rng, ctx.device)
        self.step_model = data_parallel(self.model, ctx)
        return source is not None

    def announce(self) -> None:
        job, schedule = self.job, self.job.schedule
        self.log.info(
            f"{job.stage}: {self.total} iterations ({self.iters_per_epoch}/epoch, {schedule.epochs} epochs, max_iters "
            f"{schedule.max_iters}), {self.describe_processes()}, "
            f"lr {' / '.join(format(group['initial_lr'], 'g') for group in self.optimizer.param_groups)}, "
            f"amp {self.options.amp}, device {self.ctx.device}, run dir {job.run_dir}"
        )
        self.log.info(f"identity: {describe_identity(job.identity)}")
        for line in job.notices:
            self.log.info(line)

    def patience_exhausted(self) -> bool:
        """Early stop: ``stop_patience`` epochs have passed since the best validation."""
        since_best = self.epoch - self.best["iteration"] // self.iters_per_epoch
        if self.job.stop_patience and self.best["iteration"] >= 0 and since_best >= self.job.stop_patience:
            self.log.info(f"early stop before epoch {self.epoch + 1}: {since_best} epochs without a better validation mIoU")
            return True
        return False

    def checkpoint(self, validated: bool) -> dict[str, Any]:
        """The training checkpoint of the current iteration (every rank's RNG states; on the main rank only)."""
        job, order = self.job, self.job.schedule
        rng = gather_to_main(rng_state(self.ctx.device))
        return {
            "stage": job.stage,
            "identity": job.identity,
            "run_id": self.start.run_id,
            "finished": False,
            "validated": validated,
            "model": job.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "rng": rng,
            "data_order": {"seed": self.options.seed, "iters_per_epoch": self.iters_per_epoch,
                           "world_size": self.ctx.world_size, "batch_size": order.batch_size},
            "best": self.best,
            "config": dict(self.cfg),
            **job.record,
        }

    def save(self, name: str, validated: bool = True) -> None:
        """Write ``name`` (``last.pth`` or ``best.pth``) after checking that the losses since the last check and the
        weights are finite. ``validated``: false for the ``last.pth`` written at an epoch's end before its validation."""
        self.check_finite()
        _check_finite_weights(self.job, self.iteration, self.options.amp)
        state = self.checkpoint(validated)
        if self.ctx.is_main:
            save_atomic(inference_state(state) if name == BEST else state, self.job.run_dir / name)
        barrier()

    def epoch_loader(self, epoch: int) -> tuple[DataLoader, int]:
        """The run's loader, set to ``epoch``'s remaining batches (a resumed epoch skips those done), and how many it
        gives. One loader serves every epoch, so its worker processes start once per run (``persistent_workers``)."""
        if epoch > 0:
            self.train_set = self.job.make_train_set(epoch)
        done_in_epoch = self.iteration - epoch * self.iters_per_epoch
        steps = min(self.iters_per_epoch, self.total - epoch * self.iters_per_epoch) - done_in_epoch
        self.sampler.set_epoch(epoch, len(self.train_set), skip=done_in_epoch * self.batch)
        if self.loader is None:
            workers = self.options.workers
            self.loader = DataLoader(
                _EpochItems(self.job.make_train_set), batch_size=self.batch, sampler=self.sampler, num_workers=workers,
                collate_fn=self.job.collate, drop_last=True, worker_init_fn=worker_signals,
                pin_memory=self.ctx.device.type == "cuda", persistent_workers=workers > 0,
                generator=torch.Generator().manual_seed(self.options.seed),  # its draws leave the global RNG (dropout) alone
            )
        return self.loader, steps

    def step(self, batch: Any) -> float:
        """One optimisation step on ``batch``; returns the learning rate it used. The losses stay on the device."""
        batch = to_device(batch, self.ctx.device)
        # under DDP gradients persist (data_parallel)
        self.optimizer.zero_grad(set_to_none=self.step_model is self.model)
        with autocast(self.ctx.device, self.options.amp):
            outputs = self.job.step(self.step_model, batch)
        self.losses = {k: v.detach().float() for k, v in outputs.items() if k.startswith("loss")}
        first = (self.first_bad == 0) & ~torch.isfinite(self.losses["loss"])
        self.first_bad = torch.where(first, self.iteration + 1, self.first_bad)
        self.bad_loss = torch.where(first, self.losses["loss"], self.bad_loss)
        self.scaler.scale(outputs["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # fp16: GradScaler skips the first steps (inf gradients at its start scale)
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.iteration += 1
        return lr

    def check_finite(self) -> None:
        """Stop (:class:`TrainingDiverged`) if a loss of any rank was not finite since the run began (reads the device)."""
        first_bad = int(all_reduce_first(self.first_bad))
        if first_bad:
            value = float(self.bad_loss) if int(self.first_bad) == first_bad else "non-finite"
            raise TrainingDiverged(f"loss became {value} at iteration {first_bad} (epoch "
                                   f"{(first_bad - 1) // self.iters_per_epoch + 1}); "
                                   + _last_good(self.job.run_dir, self.options.amp))

    def log_step(self, lr: float, epoch: int, per_iter: float, bar: tqdm) -> None:
        """Every ``print_freq`` iterations and at the end: the losses (averaged over ranks), checked to be finite."""
        if self.iteration % self.options.print_freq and self.iteration != self.total:
            return
        self.check_finite()
        names = list(self.losses)
        values = dict(zip(names, all_reduce_mean(torch.stack([self.losses[k] for k in names])).tolist()))
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
        self.log.scalars({f"train/{k}": v for k, v in values.items()} | {"train/lr": lr}, self.iteration)
        self.log.info(
            f"iter {self.iteration}/{self.total} epoch {epoch + 1} "
            + " ".join(f"{k} {v:.4f}" for k, v in values.items())
            + f" lr {lr:.3e} {per_iter:.2f}s/it"
        )

    def interrupted(self, signum: int) -> RunInterrupted:
        """The error that ends a run stopped by ``signum`` once ``last.pth`` holds the current iteration."""
        name, last = signal.Signals(signum).name, self.job.run_dir / LAST
        self.log.info(f"{name}: saved {last} at iteration {self.iteration}")
        return RunInterrupted(f"stopped by {name} at iteration {self.iteration}/{self.total}; {last} holds that state: "
                              "run the same command with resume auto to continue (train.sh does)", signum)

    def train_epoch(self, epoch: int) -> None:
        """The rest of ``epoch``; mid-epoch ``last.pth`` every ``checkpoint_interval`` iterations and on a stop signal
        (all ranks agree on the iteration: :meth:`util.runs.guard.StopRequest.poll`)."""
        loader, steps = self.epoch_loader(epoch)
        self.model.train()
        with tqdm(total=steps, desc=f"{self.job.stage} epoch {epoch + 1}/{self.job.schedule.epochs}",
                  disable=not self.ctx.is_main, dynamic_ncols=True) as bar:
            started, done = time.perf_counter(), 0
            for batch in loader if steps else ():
                lr = self.step(batch)
                done += 1
                bar.update(1)
                self.log_step(lr, epoch, (time.perf_counter() - started) / done, bar)
                if self.iteration % self.iters_per_epoch and self.iteration < self.total:  # the epoch's end saves later
                    signum = self.stop.poll()
                    if signum or self.iteration % self.options.checkpoint_interval == 0:
                        self.save(LAST)
                    if signum:
                        raise self.interrupted(signum)
                if done == steps:
                    break

    def end_epoch(self) -> None:
        """At an epoch's end: ``last.pth`` (marked as not yet validated), then the validation every ``val_interval``
        epochs (``best.pth`` if better). A stop signal before it ends the run without validating; one during it ends
        the validation at once (``last.pth`` already holds the iteration; a resumed run validates first)."""
        job = self.job
        signum = self.stop.agreed()
        due = job.validate is not None and (self.epoch % self.options.val_interval == 0 or self.iteration == self.total)
        self.save(LAST, validated=not due)
        if signum:
            raise self.interrupted(signum)
        if due:
            try:
                with self.stop.interruptible():
                    self.last_metrics = job.validate(self.model)
            except StopNow as stopped:
                raise RunInterrupted(
                    f"stopped by {signal.Signals(stopped.args[0]).name} during the validation after iteration "
                    f"{self.iteration}; {job.run_dir / LAST} holds that iteration (the validation runs again when the "
                    "run continues): run the same command with resume auto to continue", stopped.args[0]) from None
            self.log.scalars({f"val/{k}": v for k, v in self.last_metrics.items()}, self.iteration)
            self.log.info(f"validation after iteration {self.iteration}: "
                          + " ".join(f"{k} {v:.4f}" for k, v in self.last_metrics.items()))
            if self.last_metrics["miou"] > self.best["miou"]:
                self.best = {"miou": self.last_metrics["miou"], "iteration": self.iteration, "metrics": self.last_metrics}
                self.save(BEST)
                self.log.info(f"new best mIoU {self.best['miou']:.4f} -> {job.run_dir / BEST}")
        elif job.validate is None:
            self.best = {"miou": math.nan, "iteration": self.iteration, "metrics": {}}
            self.save(BEST)
        self.validation_due = False

    def finish(self) -> TrainResult:
        """Mark both checkpoints finished and say how the run ended."""
        if self.ctx.is_main:
            for name in (BEST, LAST):
                _mark_finished(self.job.run_dir / name, self.best)
        barrier()
        self.log.info(f"{self.job.stage} done: {self.iteration} iterations; best mIoU {self.best['miou']:.4f} at "
                      f"iteration {self.best['iteration']}")
        for line in self.job.notices:
            self.log.info(line)
        return TrainResult(iteration=self.iteration, best=self.best, last_metrics=self.last_metrics)

    def run(self) -> TrainResult:
        """Per epoch: build its loader and step through it, then save and validate; then mark the run finished."""
        self.announce()
        if self.validation_due:
            self.end_epoch()
        while self.iteration < self.total and not self.patience_exhausted():
            self.train_epoch(self.epoch)
            self.end_epoch()
        return self.finish()
