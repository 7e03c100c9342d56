"""The one training loop, used by stage 1 (train_base.py) and stage 2 (train.py).

SGD with momentum, poly learning rate stepped per iteration, optional autocast (bf16/fp16, GradScaler
for fp16), DDP when run under torchrun, tqdm bars, tensorboardX scalars and a log file per run.

Resumability: the data order of epoch e is a pure function of (seed, e) (:class:`EpochSampler`) and
the dataset of epoch e comes from ``make_train_set(e)`` whose items are pure functions of their index,
so a run resumed from a checkpoint skips the iterations already done in that epoch and then sees
exactly the batches, dropout draws (restored RNG states) and learning rates of an uninterrupted run.
Resumable checkpoints (``last.pth``) are written every ``checkpoint_interval`` iterations, at the
end of every epoch after its validation and when SIGINT/SIGTERM stops the run; ``best.pth`` (what inference
needs, without the training state) whenever the validation score improves. Both are marked ``finished`` at the end of the schedule. What protects
the user's files (lock, overwrite rule, finished stages, stop signals) is in :mod:`util.runguard`.
"""
from __future__ import annotations

import itertools
import math
import signal
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from util.checkpoint import (BEST, LAST, RUN_DIR_KEYS, TRAINING_STATE_KEYS, describe_identity, inference_state,
                              load_checkpoint, restore_rng_state, rng_state, run_record, save_atomic)
from util.cli import config_from_cli
from util.config import Config
from util.distributed import (DistContext, EpochSampler, all_reduce_mean, barrier, data_parallel, init_distributed,
                              shutdown_distributed)
from util.errors import UserError
from util.runguard import (RunInterrupted, StartPoint, StopRequest, plan_start, run_dir_lock, skip_message,
                           worker_signals)
from util.runlog import RunLog
from util.runtime import autocast, check_amp, grad_scaler, seed_everything, to_device


class TrainingDiverged(UserError):
    """The loss (or the weights) stopped being finite; the last good checkpoint is left as it was."""


@dataclass
class Schedule:
    """How long and how fast: epochs, batch size per process, learning rate, optional iteration cap."""

    epochs: int
    batch_size: int
    lr: float
    max_iters: int = 0


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
    ``identity`` is what defines the trained model (:func:`util.checkpoint.run_identity`, plus provenance such
    as ``base_weight``); every checkpoint stores it, and the run directory's checkpoints must agree with it.
    ``record`` entries are saved in every checkpoint (e.g. where the backbone's weights came from); ``notices``
    are logged when the run starts and again when it ends (e.g. a warning that the backbone started from random
    weights).
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


def _checkpoint(job: TrainJob, cfg: Mapping[str, Any], seed: int, optimizer, scheduler, scaler, iteration: int,
                iters_per_epoch: int, world_size: int, best: dict[str, Any], run_id: str | None,
                finished: bool) -> dict[str, Any]:
    return {
        "stage": job.stage,
        "identity": job.identity,
        "run_id": run_id,
        "finished": finished,
        "model": job.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": iteration // iters_per_epoch,
        "iteration": iteration,
        "rng": rng_state(),
        "data_order": {"seed": seed, "iters_per_epoch": iters_per_epoch, "world_size": world_size,
                       "batch_size": job.schedule.batch_size},
        "best": best,
        "config": dict(cfg),
        **job.record,
    }


def _check_finite_weights(job: TrainJob, iteration: int, amp: str) -> None:
    tensors = (p for entry in job.parameters for p in (entry["params"] if isinstance(entry, dict) else [entry]))
    if not all(bool(torch.isfinite(p).all()) for p in tensors):
        raise TrainingDiverged(f"weights stopped being finite at iteration {iteration}; " + _last_good(job.run_dir, amp))


def _last_good(run_dir: Path, amp: str) -> str:
    fix = f"set amp off (the run used amp {amp})" if amp != "off" else "lower the learning rate"
    if (run_dir / LAST).is_file():
        return f"the last good checkpoint ({run_dir / LAST}) is intact: {fix}, then resume"
    return f"no checkpoint had been written yet: {fix} and start again"


def _interrupted(signum: int, iteration: int, total: int, run_dir: Path, log: RunLog) -> RunInterrupted:
    """The error that ends a run stopped by ``signum`` once ``last.pth`` holds ``iteration``."""
    name = signal.Signals(signum).name
    log.info(f"{name}: saved {run_dir / LAST} at iteration {iteration}")
    return RunInterrupted(f"stopped by {name} at iteration {iteration}/{total}; {run_dir / LAST} holds that state: "
                          "run the same command with resume auto to continue (train.sh does)", signum)


def _batches(loader: DataLoader, steps: int, stop: StopRequest, world_size: int) -> Iterator[Any]:
    """The first ``steps`` batches of ``loader``; if a stop signal also ended the loader's workers (SIGTERM to
    the process group) while it waited for a batch, the epoch just ends early (one process: the loop then saves)."""
    batches = itertools.islice(loader, steps)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError:  # torch: "DataLoader worker (pid(s) ...) exited unexpectedly"
            if stop.signal is None or world_size > 1:
                raise
            return
        yield batch


def _validate(job: TrainJob, model: nn.Module, stop: StopRequest, world_size: int, iteration: int) -> dict[str, float]:
    """``job.validate(model)``; if a stop signal also ended the validation loader's workers (SIGTERM to the
    process group), the run stops with the last checkpoint saved before this validation."""
    try:
        return job.validate(model)
    except RuntimeError:  # torch: "DataLoader worker (pid(s) ...) exited unexpectedly"
        if stop.signal is None or world_size > 1:
            raise
        last = job.run_dir / LAST
        kept = f"{last} holds iteration {run_record(last)['iteration']}" if last.is_file() else "no checkpoint was saved yet"
        raise RunInterrupted(f"stopped by {signal.Signals(stop.signal).name} during the validation after iteration "
                             f"{iteration}; {kept}: run the same command with resume auto to continue", stop.signal) from None


def _skip_finished(job: TrainJob, done: Path, ctx: DistContext) -> TrainResult:
    """A finished stage under ``resume auto``: say so and change nothing (the result is read from ``last.pth``, which
    holds where the run ended, when it exists)."""
    if ctx.is_main:
        print(skip_message(job.stage, done), file=sys.stderr)
    last = job.run_dir / LAST
    record = run_record(last if last.is_file() else done)
    best = record.get("best") or {}
    return TrainResult(iteration=record.get("iteration") or 0, best=best, last_metrics=best.get("metrics", {}))


def _mark_finished(path: Path) -> None:
    """Flag a checkpoint written before the schedule ended (``best.pth``; ``last.pth`` of a run resumed at
    its end) as belonging to a finished run."""
    if path.is_file() and not run_record(path).get("finished"):
        save_atomic(load_checkpoint(path) | {"finished": True}, path)


def train(cfg: Mapping[str, Any], job: TrainJob, ctx: DistContext) -> TrainResult:
    """Run (or resume, per ``cfg.resume``) a training job to the end of its schedule.

    Holds the run directory's lock, refuses to replace checkpoints another run wrote (``cfg.overwrite``),
    does nothing for a stage already finished (``resume auto``), and on SIGINT/SIGTERM saves ``last.pth``
    at the current iteration and raises :class:`RunInterrupted`.
    """
    with run_dir_lock(job.run_dir, ctx, RUN_DIR_KEYS.get(job.stage, "exp_dir")) as lock:
        start = plan_start(cfg, job.stage, job.run_dir, job.identity)
        if start.finished is not None:
            return _skip_finished(job, start.finished, ctx)
        if ctx.is_main:
            cfg.save(job.run_dir / "config.yaml")
        log = RunLog(job.run_dir, f"train_{job.stage}", enabled=ctx.is_main)
        try:
            if lock is not None and lock.taken_over:
                log.info(lock.taken_over)
            with StopRequest() as stop:
                return _train(cfg, job, ctx, log, start, stop)
        finally:
            log.close()


def train_from_cli(argv: Sequence[str] | None, description: str,
                   build_job: Callable[[Config, DistContext], TrainJob]) -> TrainResult:
    """An entry point's whole run: config from the command line, distributed set-up, seeding, :func:`train`."""
    cfg = config_from_cli(argv, description)
    ctx = init_distributed(cfg.device)
    try:
        check_amp(cfg.amp, ctx.device)
        seed_everything(cfg.seed)
        return train(cfg, build_job(cfg, ctx), ctx)
    finally:
        shutdown_distributed()


class _Run:
    """One run of a :class:`TrainJob`: the optimiser, the schedule's position and the best score, and the steps of
    the loop (:func:`_train`). ``cfg`` is only recorded in the checkpoints; the loop reads ``options``."""

    def __init__(self, job: TrainJob, options: LoopOptions, cfg: Mapping[str, Any], ctx: DistContext, log: RunLog,
                 start: StartPoint, stop: StopRequest) -> None:
        self.job, self.options, self.cfg, self.ctx, self.log, self.start, self.stop = job, options, cfg, ctx, log, start, stop
        schedule = job.schedule
        self.model = job.model.to(ctx.device)
        self.optimizer = torch.optim.SGD(job.parameters, lr=schedule.lr, momentum=options.momentum,
                                         weight_decay=options.weight_decay)
        self.train_set = job.make_train_set(0)
        self.iters_per_epoch = len(self.train_set) // ctx.world_size // schedule.batch_size
        if self.iters_per_epoch == 0:
            raise UserError(
                f"{len(self.train_set)} training items cannot fill one batch of {schedule.batch_size} per process "
                f"on {ctx.world_size} process(es); lower the batch size or add data"
            )
        self.total = schedule.epochs * self.iters_per_epoch
        if schedule.max_iters > 0:
            self.total = min(self.total, schedule.max_iters)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=self.total, power=options.power)
        self.scaler = grad_scaler(ctx.device, options.amp)
        self.iteration = 0
        self.best: dict[str, Any] = {"miou": -math.inf, "iteration": -1, "metrics": {}}
        self.last_metrics: dict[str, float] = {}
        self.step_model = self.model

    @property
    def epoch(self) -> int:
        return self.iteration // self.iters_per_epoch

    def resume(self) -> None:
        """Continue from ``start.source`` (model, optimiser, schedule, scaler, RNG states) if there is one."""
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
                    f"iterations per epoch with {order.get('world_size')} process(es) x batch {order.get('batch_size')}) that "
                    f"this run (stage {job.stage}, {self.iters_per_epoch} iterations per epoch with {ctx.world_size} "
                    f"process(es) x batch {job.schedule.batch_size}) cannot continue: continuing needs the same global "
                    "schedule (stage, processes x batch size, episodes; a finished run is skipped whatever they are); run "
                    "it as before, or start over with resume null overwrite true"
                )
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.best = state["iteration"], state["best"]
            self.last_metrics = self.best.get("metrics", {})
            restore_rng_state(state["rng"])
            self.log.info(f"resumed from {source} at iteration {self.iteration}/{self.total}")
        elif self.options.resume == "auto":
            self.log.info(f"resume auto: no {LAST} in {job.run_dir}, starting fresh")
        self.step_model = data_parallel(self.model, ctx)

    def announce(self) -> None:
        job, schedule = self.job, self.job.schedule
        self.log.info(
            f"{job.stage}: {self.total} iterations ({self.iters_per_epoch}/epoch, {schedule.epochs} epochs, max_iters "
            f"{schedule.max_iters}), batch {schedule.batch_size} x {self.ctx.world_size} process(es), "
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

    def save(self, name: str) -> None:
        """Write ``name`` (``last.pth`` or ``best.pth``) after checking that the weights are finite."""
        _check_finite_weights(self.job, self.iteration, self.options.amp)
        if self.ctx.is_main:
            state = _checkpoint(self.job, self.cfg, self.options.seed, self.optimizer, self.scheduler, self.scaler,
                                self.iteration, self.iters_per_epoch, self.ctx.world_size, self.best, self.start.run_id,
                                self.iteration >= self.total)
            save_atomic(inference_state(state) if name == BEST else state, self.job.run_dir / name)
        barrier()

    def epoch_loader(self, epoch: int) -> tuple[DataLoader, int]:
        """The loader of ``epoch``'s remaining batches (a resumed epoch skips those done) and how many it gives."""
        if epoch > 0:
            self.train_set = self.job.make_train_set(epoch)
        batch_size, seed = self.job.schedule.batch_size, self.options.seed
        done_in_epoch = self.iteration - epoch * self.iters_per_epoch
        steps = min(self.iters_per_epoch, self.total - epoch * self.iters_per_epoch) - done_in_epoch
        sampler = EpochSampler(len(self.train_set), epoch, seed, self.ctx, skip=done_in_epoch * batch_size)
        loader = DataLoader(
            self.train_set, batch_size=batch_size, sampler=sampler, num_workers=self.options.workers,
            collate_fn=self.job.collate, drop_last=True, generator=torch.Generator().manual_seed(seed + epoch),
            worker_init_fn=worker_signals,
        )
        return loader, steps

    def step(self, batch: Any, epoch: int) -> tuple[dict[str, float], float]:
        """One optimisation step on ``batch``: the losses (averaged over ranks) and the learning rate it used."""
        batch = to_device(batch, self.ctx.device)
        # under DDP gradients persist (data_parallel)
        self.optimizer.zero_grad(set_to_none=self.step_model is self.model)
        with autocast(self.ctx.device, self.options.amp):
            outputs = self.job.step(self.step_model, batch)
        loss_names = [k for k in outputs if k.startswith("loss")]
        losses = all_reduce_mean(torch.stack([outputs[k].detach().float() for k in loss_names]))
        values = dict(zip(loss_names, losses.tolist()))
        if not math.isfinite(values["loss"]):
            raise TrainingDiverged(f"loss became {values['loss']} at iteration {self.iteration + 1} (epoch {epoch + 1}); "
                                   + _last_good(self.job.run_dir, self.options.amp))
        self.scaler.scale(outputs["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.iteration += 1
        return values, lr

    def log_step(self, values: dict[str, float], lr: float, epoch: int, per_iter: float) -> None:
        if self.iteration % self.options.print_freq == 0 or self.iteration == self.total:
            self.log.scalars({f"train/{k}": v for k, v in values.items()} | {"train/lr": lr}, self.iteration)
            self.log.info(
                f"iter {self.iteration}/{self.total} epoch {epoch + 1} "
                + " ".join(f"{k} {v:.4f}" for k, v in values.items())
                + f" lr {lr:.3e} {per_iter:.2f}s/it"
            )

    def train_epoch(self, epoch: int) -> None:
        """The rest of ``epoch``; mid-epoch ``last.pth`` every ``checkpoint_interval`` iterations and on a stop signal."""
        loader, steps = self.epoch_loader(epoch)
        self.model.train()
        with tqdm(total=steps, desc=f"{self.job.stage} epoch {epoch + 1}/{self.job.schedule.epochs}",
                  disable=not self.ctx.is_main, dynamic_ncols=True) as bar:
            started, done = time.perf_counter(), 0
            for batch in _batches(loader, steps, self.stop, self.ctx.world_size):
                values, lr = self.step(batch, epoch)
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
                self.log_step(values, lr, epoch, (time.perf_counter() - started) / done)
                if self.iteration % self.iters_per_epoch and self.iteration < self.total:  # the epoch's end saves later
                    signum = self.stop.agreed()
                    if signum or self.iteration % self.options.checkpoint_interval == 0:
                        self.save(LAST)
                    if signum:
                        raise _interrupted(signum, self.iteration, self.total, self.job.run_dir, self.log)
            if done < steps:  # the stop signal ended the loader's workers
                self.save(LAST)
                raise _interrupted(self.stop.signal, self.iteration, self.total, self.job.run_dir, self.log)

    def validate_and_save(self) -> None:
        """At an epoch's end: validate every ``val_interval`` epochs (``best.pth`` if better), then ``last.pth``;
        a stop signal received meanwhile ends the run here."""
        job, run_dir = self.job, self.job.run_dir
        if job.validate is not None and (self.epoch % self.options.val_interval == 0 or self.iteration == self.total):
            self.last_metrics = _validate(job, self.model, self.stop, self.ctx.world_size, self.iteration)
            self.log.scalars({f"val/{k}": v for k, v in self.last_metrics.items()}, self.iteration)
            self.log.info(f"validation after iteration {self.iteration}: "
                          + " ".join(f"{k} {v:.4f}" for k, v in self.last_metrics.items()))
            if self.last_metrics["miou"] > self.best["miou"]:
                self.best = {"miou": self.last_metrics["miou"], "iteration": self.iteration, "metrics": self.last_metrics}
                self.save(BEST)
                self.log.info(f"new best mIoU {self.best['miou']:.4f} -> {run_dir / BEST}")
        elif job.validate is None:
            self.best = {"miou": math.nan, "iteration": self.iteration, "metrics": {}}
            self.save(BEST)
        self.save(LAST)
        signum = self.stop.agreed()
        if signum and self.iteration < self.total:
            raise _interrupted(signum, self.iteration, self.total, run_dir, self.log)

    def finish(self) -> TrainResult:
        """Mark both checkpoints finished and say how the run ended."""
        if self.ctx.is_main:
            for name in (BEST, LAST):
                _mark_finished(self.job.run_dir / name)
        barrier()
        self.log.info(f"{self.job.stage} done: {self.iteration} iterations; best mIoU {self.best['miou']:.4f} at "
                      f"iteration {self.best['iteration']}")
        for line in self.job.notices:
            self.log.info(line)
        return TrainResult(iteration=self.iteration, best=self.best, last_metrics=self.last_metrics)


def _train(cfg: Mapping[str, Any], job: TrainJob, ctx: DistContext, log: RunLog, start: StartPoint,
           stop: StopRequest) -> TrainResult:
    """Resume, then per epoch: build its loader and step through it, validate and save; then mark the run finished."""
    run = _Run(job, LoopOptions.from_config(cfg), cfg, ctx, log, start, stop)
    run.resume()
    run.announce()
    while run.iteration < run.total and not run.patience_exhausted():
        run.train_epoch(run.epoch)
        run.validate_and_save()
    return run.finish()
