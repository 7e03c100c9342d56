"""Two gloo processes on CPU: reduced metrics equal a single-process evaluation; DDP training matches one process;
a finished run is skipped whatever the process count; no gradient-layout warning with the real networks."""
import functools
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

import train as train_script
import train_base
from tests.support.engine import Crash, make_tiny_synth, tiny_config, tiny_job
from tests.engine.test_engine_e2e import CONFIG as SYNTH, TINY as E2E_TINY
from util.runs.checkpoint import load_checkpoint
from util.common.config import load_config
from util.common.distributed import DistContext, init_distributed
from util.engine.loop import train
from util.common.errors import UserError
from util.engine.evaluator import evaluate_episodes

WORLD = 2
CPU = DistContext(0, 1, torch.device("cpu"))


class TinyEpisodes(Dataset):
    """7 episodes (odd, so the shards differ in size) with original labels of different sizes."""

    def __len__(self) -> int:
        return 7

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(index)
        h0, w0 = 5 + index % 3, 7 - index % 2
        label_ori = (torch.rand(h0, w0, generator=gen) > 0.5).long()
        label_ori[0, 0] = 255
        return {
            "query": torch.randn(3, 9, 9, generator=gen),
            "query_label": (torch.rand(9, 9, generator=gen) > 0.5).long(),
            "query_label_ori": label_ori,
            "supports": torch.randn(1, 3, 9, 9, generator=gen),
            "support_masks": (torch.rand(1, 9, 9, generator=gen) > 0.5).long(),
            "class_id": torch.tensor(1 + index % 3),
            "query_path": f"q{index}.jpg",
            "support_paths": [f"s{index}.jpg"],
        }


class TinyFewShotNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, query, supports, support_masks, class_ids):
        prototype = (supports[:, 0] * support_masks[:, :1]).mean(dim=(2, 3), keepdim=True)
        return self.conv(torch.cat([query, prototype[:, :1].expand_as(query[:, :1])], 1))


def _evaluate(ctx: DistContext) -> dict:
    torch.manual_seed(0)
    scores = evaluate_episodes(TinyFewShotNet(), TinyEpisodes(), ctx, num_classes=3, ignore_label=255, batch_size=2,
                               ori_resize=True)
    return {"per_class": scores.per_class, "fb_inter": scores.fb.inter, "fb_union": scores.fb.union}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ctx = init_distributed("cpu")
        assert (ctx.rank, ctx.world_size) == (rank, WORLD)
        result = _evaluate(ctx)
        cfg = tiny_config(batch_size=2, epochs=2, max_iters=6, checkpoint_interval=3)  # the global batch: 1 per rank
        trained = train(cfg, tiny_job(cfg, Path(out_dir) / "ddp", dropout=0.0), ctx)
        result["weights"] = trained_model_state(Path(out_dir) / "ddp")
        result["best"] = trained.best
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def trained_model_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pth")["model"]


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    single = _evaluate(CPU)
    for result in ranks:
        for key in ("per_class", "fb_inter", "fb_union"):
            assert torch.equal(result[key], single[key]), key
    assert int(single["per_class"][:, 2].sum()) == 7  # every episode once, none padded in

    cfg = tiny_config(batch_size=2, epochs=2, max_iters=6, checkpoint_interval=3)
    train(cfg, tiny_job(cfg, tmp_path / "single", dropout=0.0), CPU)
    alone = trained_model_state(tmp_path / "single")
    for key, value in alone.items():
        torch.testing.assert_close(ranks[0]["weights"][key], value, rtol=1e-5, atol=1e-6)
    assert ranks[0]["best"] == ranks[1]["best"]


def _run_in_two_processes(rank: int, init_file: str, out_dir: str, work) -> None:
    """Rank ``rank`` of a 2-process gloo world: ``work(ctx)`` with every Python warning recorded; what it returns
    and the warnings go to ``<out_dir>/rank<k>.json``."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ctx = init_distributed("cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = work(ctx)
        outcome = {"result": result, "warnings": [str(w.message) for w in caught]}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


def in_two_processes(tmp_path: Path, name: str, work) -> list[dict]:
    """What :func:`_run_in_two_processes` recorded on each rank."""
    out = tmp_path / name
    out.mkdir()
    mp.spawn(_run_in_two_processes, args=(str(tmp_path / f"{name}.init"), str(out), work), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _resume_auto(finished: Path, unfinished: Path, ctx: DistContext) -> dict:
    """``resume auto`` into a finished and into an unfinished run directory: the iteration reached, or the refusal."""
    cfg = tiny_config(batch_size=2, epochs=2, resume="auto")
    outcome = {"finished": train(cfg, tiny_job(cfg, finished), ctx).iteration}
    try:
        train(cfg, tiny_job(cfg, unfinished), ctx)
    except UserError as err:
        outcome["unfinished"] = str(err)
    return outcome


def test_a_finished_run_rerun_with_another_process_count_is_a_no_op_an_unfinished_one_is_refused(tmp_path):
    cfg = tiny_config(batch_size=2, epochs=2)
    finished, unfinished = tmp_path / "finished", tmp_path / "unfinished"
    train(cfg, tiny_job(cfg, finished), CPU)  # one process: 4 iterations per epoch
    with pytest.raises(Crash):
        train(cfg, tiny_job(cfg, unfinished, crash_at=3), CPU)  # last.pth holds iteration 2
    stamps = {p: p.stat().st_mtime_ns for p in [*finished.iterdir(), *unfinished.glob("*.pth")]}

    for rank in in_two_processes(tmp_path, "rerun", functools.partial(_resume_auto, finished, unfinished)):
        assert rank["warnings"] == [] and rank["result"] == {"finished": 8, "unfinished": (
            f"checkpoint {unfinished / 'last.pth'} was trained by 1 process(es), this run has 2: continue it with "
            "NPROC=1 (the global batch, the iterations and the schedule do not depend on the process count, each "
            "process's random state does)")}
    assert {p: p.stat().st_mtime_ns for p in [*finished.iterdir(), *unfinished.glob("*.pth")]} == stamps


def _both_stages(root: Path, ctx: DistContext) -> list[int]:
    args = [*E2E_TINY, "data_root", str(root / "synth"), "list_root", str(root / "lists"), "max_iters", "2",
            "base_batch_size", "4", "base_exp_dir", str(root / "base"), "exp_dir", str(root / "meta")]
    cfg = load_config(SYNTH, args)
    return [train(cfg, build_job(cfg, ctx), ctx).iteration for build_job in (train_base.build_job, train_script.build_job)]


@pytest.mark.slow
def test_ddp_on_cpu_trains_both_stages_without_a_gradient_layout_warning(tmp_path):
    make_tiny_synth(tmp_path)
    for rank in in_two_processes(tmp_path, "ddp", functools.partial(_both_stages, tmp_path)):
        assert rank["result"] == [2, 2]
        assert not [w for w in rank["warnings"] if "Grad strides" in w], rank["warnings"]
