"""Importing reference checkpoints, on fake files built from the reference key lists (names and shapes).

Every tensor of a fake file is random, so a value can be traced from the reference key to the key of
ours that received it. The lists live in ``shared/reference`` beside the repository.
"""
import ast
import math
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from model.backbone import Backbone, build_backbone
from model.hpm import pyramid_bins
from tests.support.reference_forward import reference_forward
from tests.model.test_model_reference import assert_logits_close, episode
from tools.checkpoint_import import main
from util.runs.checkpoint import load_checkpoint
from util.runs.weights import mianet_from_reference, pspnet_from_reference
from util.data.registry import base_classes
from util.common.config import Config, load_config
from util.common.errors import UserError
from tools.checkpoint_import import import_checkpoint
from util.runs.weights import base_learner_backbone_state, build_mianet

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
PASCAL_CONFIG = str(Path(__file__).resolve().parents[2] / "config" / "pascal" / "resnet50" / "split0.yaml")

STAGES = tuple(f"layer{i}." for i in range(5))


def read_key_list(name: str) -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    for line in (REFERENCE / name).read_text().splitlines():
        key, shape = line.split(" ", 1)
        entries.append((key, tuple(ast.literal_eval(shape))))
    return entries


def backbone_twin(key: str) -> str | None:
    """The canonical ``layerN.*`` key a duplicate backbone key copies (``encoder.N.*``, ``pspnet.layerN.*`` ...)."""
    inner = key.removeprefix("pspnet.")
    if inner.startswith("encoder."):
        _, stage, rest = inner.split(".", 2)
        return f"layer{stage}.{rest}"
    if inner != key and inner.startswith(STAGES):
        return inner
    return None


def fake_value(key: str, shape: tuple[int, ...], index: int, gen: torch.Generator) -> torch.Tensor:
    """Random values that keep a forward pass well conditioned; counters get distinct integers."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(1000 + index, dtype=torch.long)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=gen).add_(0.5)
    if key.endswith("weight") and len(shape) == 1:  # BatchNorm scales near 1, so deep features do not collapse
        return torch.randn(shape, generator=gen).mul_(0.2).add_(1.0)
    scale = 1 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else 0.1
    return torch.randn(shape, generator=gen).mul_(scale)


def write_fake_reference(path: Path, entries: list[tuple[str, tuple[int, ...]]], prefix: str, seed: int) -> Path:
    """``{'state_dict': ...}`` in the list's key order; duplicate backbone keys share their twin's tensor."""
    gen = torch.Generator().manual_seed(seed)
    values = {key: fake_value(key, shape, i, gen) for i, (key, shape) in enumerate(entries) if backbone_twin(key) is None}
    state = {prefix + key: values[backbone_twin(key) or key] for key, _ in entries}
    assert all(tuple(state[prefix + key].shape) == shape for key, shape in entries)
    torch.save({"state_dict": state}, path)
    return path


def fingerprint(tensor: torch.Tensor) -> tuple:
    """Enough to tell random tensors apart; matches are confirmed with ``torch.equal``."""
    return tensor.dtype, tuple(tensor.shape), tuple(tensor.flatten()[:8].tolist())


def trace_values(reference: dict[str, torch.Tensor], keys: list[str], ours: dict[str, torch.Tensor]) -> dict[str, str]:
    """Reference key -> our key holding an identical tensor, for every one of ``keys``; checks it is a bijection."""
    index = {fingerprint(v): k for k, v in ours.items()}
    assert len(index) == len(ours), "our state has repeated tensors"
    placed = {}
    for key in keys:
        ours_key = index.get(fingerprint(reference[key]))
        assert ours_key is not None, f"value of reference key {key} is not in our model"
        assert torch.equal(ours[ours_key], reference[key])
        placed[key] = ours_key
    assert sorted(placed.values()) == sorted(ours), "some of our tensors came from no reference key"
    return placed


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> Callable[[str, str], Path]:
    """A cached fake reference checkpoint per (key list, key prefix)."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference key lists not found in {REFERENCE}")
    folder = tmp_path_factory.mktemp("reference")
    made: dict[tuple[str, str], Path] = {}

    def make(name: str, prefix: str = "") -> Path:
        if (name, prefix) not in made:
            path = folder / f"{Path(name).stem}{'_module' if prefix else ''}.pth"
            made[name, prefix] = write_fake_reference(path, read_key_list(name), prefix, seed=zlib.crc32(path.name.encode()))
        return made[name, prefix]

    return make


@pytest.fixture(scope="module")
def word300(tmp_path_factory) -> Path:
    """300-d PASCAL class vectors (21 rows), the width the official GIG (556 = 300 + 256) was trained with."""
    rows = np.random.default_rng(0).normal(size=(21, 300)).astype(np.float32)
    path = tmp_path_factory.mktemp("words") / "pascal_300.npy"
    np.save(path, rows / np.linalg.norm(rows, axis=1, keepdims=True))
    return path


@pytest.fixture(scope="module")
def backbone_of() -> Callable[[str], Backbone]:
    """One random backbone per name, for the key and shape checks of base_learner_backbone_state (it reads only)."""
    built: dict[str, Backbone] = {}

    def get(name: str) -> Backbone:
        if name not in built:
            built[name] = build_backbone(name)
        return built[name]

    return get


def mianet_cfg(backbone: str, words: Path) -> Config:
    return load_config(None, {"dataset": "pascal", "backbone": backbone, "pretrained_backbone": False,
                              "embedding_file": str(words)})


OFFICIAL = {"resnet50": ("official_mianet_resnet50_state_dict.txt", ""),
            "vgg16_bn": ("official_mianet_vgg16bn_state_dict.txt", "module.")}


@pytest.fixture(scope="module")
def imported_mianet(reference_file, word300, tmp_path_factory) -> Callable[[str], tuple[Path, Path, Config]]:
    """(fake official file, its import, config) per backbone, imported once."""
    folder = tmp_path_factory.mktemp("imported")
    made: dict[str, tuple[Path, Path, Config]] = {}

    def make(backbone: str) -> tuple[Path, Path, Config]:
        if backbone not in made:
            source, cfg = reference_file(*OFFICIAL[backbone]), mianet_cfg(backbone, word300)
            made[backbone] = source, import_checkpoint(source, "mianet", cfg, folder / f"{backbone}.pth"), cfg
        return made[backbone]

    return make


def reference_state(path: Path) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}


def own_keys(reference: dict[str, torch.Tensor]) -> list[str]:
    """pspnet.* is the base learner: its backbone duplicates layerN.* and its ppm/cls head is not part of MIANet."""
    return [k for k in reference if not k.startswith("pspnet.")]


@pytest.mark.parametrize("backbone", sorted(OFFICIAL))
def test_official_mianet_import_places_every_tensor(imported_mianet, backbone_of, backbone):
    source, out, _ = imported_mianet(backbone)
    reference = reference_state(source)
    placed = trace_values(reference, own_keys(reference), load_checkpoint(out)["model"])
    for key, ours in placed.items():
        if key.startswith(STAGES):
            assert ours == f"backbone.{key}"
        elif key.startswith(("GIG.", "LFG.")):
            assert ours == key[:3].lower() + key[3:]
        elif key.startswith(("init_merge.", "alpha_conv.", "beta_conv.", "inner_cls.", "res1.", "res2.", "cls.")):
            assert ours == f"ifm.{key}"
        else:
            assert ours == key == "down_features.0.weight"

    backbone_state = base_learner_backbone_state(source, backbone_of(backbone))
    assert sorted(backbone_state) == sorted(k for k in reference if k.startswith(STAGES))
    assert all(torch.equal(v, reference[k]) for k, v in backbone_state.items())


def test_imported_mianet_loads_strictly_matches_official_trainable_count_and_runs(imported_mianet):
    source, out, cfg = imported_mianet("resnet50")
    model = build_mianet(cfg)
    model.load_state_dict(load_checkpoint(out)["model"], strict=True)
    reference = reference_state(source)
    official_trainable = sum(reference[k].numel() for k in own_keys(reference) if not k.startswith(STAGES))
    assert sum(p.numel() for p in model.trainable_parameters()) == official_trainable
    assert torch.equal(model.gig.model[0].weight, reference["GIG.model.0.weight"])
    assert torch.equal(model.ifm.cls[3].bias, reference["cls.3.bias"])

    gen = torch.Generator().manual_seed(0)
    query, supports = torch.randn(1, 3, 65, 65, generator=gen), torch.randn(1, 1, 3, 65, 65, generator=gen)
    masks = torch.zeros(1, 1, 65, 65, dtype=torch.long)
    masks[..., 20:50, 10:40] = 1
    with torch.no_grad():
        first = model.eval()(query, supports, masks, torch.tensor([3]))
        again = model(query, supports, masks, torch.tensor([3]))
    assert first.shape == (1, 2, 65, 65) and torch.isfinite(first).all()
    assert torch.equal(first, again)


@pytest.mark.parametrize("backbone", sorted(OFFICIAL))
def test_imported_official_mianet_computes_what_the_reference_computes(imported_mianet, word300, backbone):
    """The fake official file through the importer into MIANet, and the same file as it is into the oracle (its own
    backbone copy loaded from the file's layerN.* keys): the same logits (float64, 233 px, 1-shot)."""
    source, out, cfg = imported_mianet(backbone)
    reference = {k: v.double() if v.is_floating_point() else v for k, v in reference_state(source).items()}
    model = build_mianet(cfg)
    model.load_state_dict(load_checkpoint(out)["model"], strict=True)
    model.double().eval()
    oracle_backbone = build_backbone(backbone).double().eval()
    oracle_backbone.load_state_dict({k: v for k, v in reference.items() if k.startswith(STAGES)}, strict=True)
    words = torch.from_numpy(np.load(word300)).double()
    data = episode(1, 1, 233, seed=13)
    with torch.no_grad():
        ours = model(data["query"], data["supports"], data["support_masks"], data["class_ids"])
        expected = reference_forward(oracle_backbone, reference, words, data["query"], data["supports"],
                                     data["support_masks"], data["class_ids"], pyramid_bins((233 - 1) // 8 + 1))
    assert float(expected["logits"].abs().max()) > 1e-3
    assert_logits_close(ours, expected["logits"])


@pytest.mark.parametrize("dataset, backbone, key_list, prefix", [
    ("pascal", "resnet50", "bam_pspnet_pascal_resnet50.txt", "module."),
    ("pascal", "vgg16_bn", "bam_pspnet_pascal_vgg.txt", ""),
    ("coco", "resnet50", "bam_pspnet_coco_resnet50.txt", ""),
    ("coco", "vgg16_bn", "bam_pspnet_coco_vgg.txt", "module."),
])
def test_bam_pspnet_import_and_base_learner_backbone(reference_file, backbone_of, tmp_path, dataset, backbone,
                                                     key_list, prefix):
    cfg = load_config(None, {"dataset": dataset, "backbone": backbone, "pretrained_backbone": False})
    head_rows = dict(read_key_list(key_list))["cls.4.weight"][0]
    assert head_rows == {"pascal": 16, "coco": 61}[dataset]
    assert len(base_classes(dataset, cfg.split, cfg.coco_split_style)) + 1 == head_rows

    source = reference_file(key_list, prefix)
    # import_checkpoint loads strictly into build_pspnet(cfg) before saving, so the head must have head_rows
    out = import_checkpoint(source, "pspnet", cfg, tmp_path / "base.pth")
    reference = reference_state(source)
    placed = trace_values(reference, [k for k in reference if not k.startswith("encoder.")], load_checkpoint(out)["model"])
    assert all(ours == (f"backbone.{key}" if key.startswith(STAGES) else key) for key, ours in placed.items())

    backbone_keys = sorted(k for k in reference if k.startswith(STAGES))
    for path in (source, out):  # BAM's file and our own stage-1 checkpoint
        state = base_learner_backbone_state(path, backbone_of(backbone))
        assert sorted(state) == backbone_keys
        assert all(torch.equal(state[k], reference[k]) for k in backbone_keys)


def test_checkpoint_of_another_backbone_is_a_user_error_naming_keys(reference_file, backbone_of, word300, tmp_path):
    vgg_base = reference_file("bam_pspnet_pascal_vgg.txt", "")
    resnet = backbone_of("resnet50")
    own, theirs = resnet.state_dict(), {k: v for k, v in reference_state(vgg_base).items() if k.startswith(STAGES)}
    missing = next(k for k in own if k not in theirs)
    unexpected = next(k for k in theirs if k not in own)
    with pytest.raises(UserError, match="missing") as info:
        base_learner_backbone_state(vgg_base, resnet)
    assert missing in str(info.value) and unexpected in str(info.value) and str(vgg_base) in str(info.value)

    vgg_mianet = reference_file("official_mianet_vgg16bn_state_dict.txt", "module.")
    with pytest.raises(UserError, match="does not fit") as info:
        import_checkpoint(vgg_mianet, "mianet", mianet_cfg("resnet50", word300), tmp_path / "never.pth")
    assert "backbone.layer" in str(info.value)
    assert not (tmp_path / "never.pth").exists()


def scalars(state: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.item() for k, v in state.items()}


def tensors(state: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([v]) for k, v in state.items()}


def test_key_mapping_prefers_the_top_level_backbone_copy():
    both = tensors({"pspnet.layer0.0.weight": 0.0, "pspnet.encoder.0.0.weight": 1.0, "pspnet.cls.4.bias": 2.0,
                    "layer0.0.weight": 3.0, "GIG.model.0.bias": 4.0, "res2.2.weight": 5.0})
    assert scalars(mianet_from_reference(both)) == {"backbone.layer0.0.weight": 3.0, "gig.model.0.bias": 4.0,
                                                   "ifm.res2.2.weight": 5.0}
    only_pspnet = {k: v for k, v in both.items() if k != "layer0.0.weight"}
    assert scalars(mianet_from_reference(only_pspnet))["backbone.layer0.0.weight"] == 0.0
    bam = tensors({"layer3.0.conv1.weight": 0.0, "encoder.3.0.conv1.weight": 1.0, "ppm.features.0.1.weight": 2.0,
                   "cls.4.bias": 3.0})
    assert scalars(pspnet_from_reference(bam)) == {"backbone.layer3.0.conv1.weight": 0.0, "ppm.features.0.1.weight": 2.0,
                                                   "cls.4.bias": 3.0}


def test_help_shows_the_examples_as_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    first = lines.index("    python -m tools.checkpoint_import --config config/pascal/resnet50/split0.yaml \\")
    assert lines[first + 1].startswith("        --mianet train_epoch_xx.pth --out ")
    assert lines[first + 3].startswith("        --pspnet PSPNet_res50/best.pth --out ")


@pytest.mark.parametrize("key_list, given, right", [("official_mianet_resnet50_state_dict.txt", "--pspnet", "--mianet"),
                                                    ("bam_pspnet_pascal_resnet50.txt", "--mianet", "--pspnet")])
def test_a_file_given_to_the_other_option_names_the_right_one(reference_file, word300, tmp_path, capsys, key_list,
                                                              given, right):
    source = reference_file(key_list, "")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", PASCAL_CONFIG, given, str(source), "--out", str(tmp_path / "out.pth"), "pretrained_backbone",
              "false", "embedding_file", str(word300)])
    errors = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: checkpoint {source} is a ") and errors[0].endswith(f"import it with {right}")
    assert not (tmp_path / "out.pth").exists()
