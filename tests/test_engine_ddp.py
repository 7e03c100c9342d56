"""Two gloo processes on CPU: reduced metrics equal a single-process evaluation; DDP training matches one process."""
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from tests.fixtures_engine import tiny_config, tiny_job
from util.checkpoint import load_checkpoint
from util.distributed import DistContext, init_distributed
from util.engine import train
from util.evaluator import evaluate_episodes

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
    scores = evaluate_episodes(TinyFewShotNet(), TinyEpisodes(), ctx, num_classes=3, batch_size=2, ori_resize=True)
    return {"per_class": scores.per_class, "fb_inter": scores.fb.inter, "fb_union": scores.fb.union}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ctx = init_distributed("cpu")
        assert (ctx.rank, ctx.world_size) == (rank, WORLD)
        result = _evaluate(ctx)
        cfg = tiny_config(batch_size=1, epochs=2, max_iters=6, checkpoint_interval=3)
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
