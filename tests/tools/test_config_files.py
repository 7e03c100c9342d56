"""The shipped config files: all load, per-fold files only set the fold, reference schedules, CLI errors."""
from pathlib import Path

import pytest
import yaml

from util.data.registry import names, num_folds
from util.common.cli import config_from_cli
from util.common.config import ConfigError, load_config
from util.common.errors import cli_entry

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
ALL_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))
FOLD_FILES = sorted(CONFIG_DIR.rglob("split*.yaml"))
EXPECTED = {("pascal", "resnet50"), ("pascal", "resnet101"), ("pascal", "vgg16_bn"), ("coco", "resnet50"),
            ("coco", "vgg16_bn"), ("synth", "efficientnet_lite0"), ("pascal", "resnet50_tv"), ("coco", "resnet50_tv"),
            ("fss", "resnet50"), ("fss", "vgg16_bn"), ("fss", "efficientnet_lite0")}


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_file_loads(path):
    cfg = load_config(path)
    assert cfg.dataset in names()


def test_every_dataset_backbone_has_all_its_folds():
    found = {}
    for path in FOLD_FILES:
        cfg = load_config(path)
        found.setdefault((cfg.dataset, cfg.backbone), set()).add(cfg.split)
        assert path.parent.name == cfg.backbone and path.parent.parent.name == cfg.dataset
    assert found == {key: set(range(num_folds(key[0]))) for key in EXPECTED}


@pytest.mark.parametrize("path", FOLD_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_fold_files_say_only_what_differs(path):
    data = yaml.safe_load(path.read_text())
    assert data == {"_base_": "defaults.yaml", "split": int(path.stem[-1])}
    assert load_config(path) == load_config(path.parent / "defaults.yaml", ["split", path.stem[-1]])


def test_reference_schedules():
    pascal = load_config(CONFIG_DIR / "pascal" / "resnet50" / "split0.yaml")
    assert (pascal.train_size, pascal.epochs, pascal.batch_size, pascal.base_lr) == (473, 200, 4, 0.05)
    assert (pascal.scale_min, pascal.scale_max, pascal.rotate_min, pascal.rotate_max) == (0.9, 1.1, -10.0, 10.0)
    coco = load_config(CONFIG_DIR / "coco" / "vgg16_bn" / "split3.yaml")
    assert (coco.train_size, coco.val_size, coco.epochs, coco.scale_min, coco.scale_max) == (641, 641, 50, 0.8, 1.25)
    assert coco.backbone == "vgg16_bn" and coco.split == 3
    assert len(pascal.test_seeds) == 5 and pascal.test_episodes == 1000 and coco.test_episodes == 5000


def test_shot_comes_as_an_override():
    cfg = config_from_cli(["--config", str(CONFIG_DIR / "pascal" / "vgg16_bn" / "split1.yaml"), "shot", "5",
                           "rotate_min", "-5"], "test")
    assert (cfg.shot, cfg.split, cfg.backbone, cfg.rotate_min) == (5, 1, "vgg16_bn", -5.0)


@pytest.mark.parametrize("overrides, message", [
    (["shots", "5"], "override: unknown key 'shots'; did you mean 'shot'?"),
    (["base_lr", "fast"], "override: key 'base_lr' must be a float like 0.05, got str 'fast'"),
])
def test_cli_errors_are_one_line_with_exit_code_2(capsys, overrides, message):
    main = cli_entry(lambda argv: config_from_cli(argv, "test"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(CONFIG_DIR / "pascal" / "resnet50" / "split0.yaml"), *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"


def test_unknown_key_inside_a_dataset_file_names_that_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text(f"_base_: {CONFIG_DIR / 'synth' / 'efficientnet_lite0' / 'split0.yaml'}\nval_szie: 200\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key 'val_szie'; did you mean 'val_size'\?"):
        load_config(bad)


REFERENCE_PROTOCOL = {"novel_in_train": "drop_any", "episode_class": "any_size", "train_crop": "uniform_retry",
                      "base_images": "all"}
SYNTH_PROTOCOL = {"novel_in_train": "drop_counted", "episode_class": "counted", "train_crop": "foreground_anchor",
                   "base_images": "fold_lists", "base_head_lr_mult": 1.0, "base_stop_patience": 0}


@pytest.mark.parametrize("path", [p for p in FOLD_FILES if p.parts[-3] in ("pascal", "coco")],
                         ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_pascal_and_coco_run_the_reference_protocol(path):
    cfg = load_config(path)
    assert {key: cfg[key] for key in REFERENCE_PROTOCOL} == REFERENCE_PROTOCOL


def test_synth_sets_its_protocol_in_its_own_file():
    """The demo schedule's protocol choices are written in the synth config, so they do not follow the defaults
    (the reference's)."""
    own = yaml.safe_load((CONFIG_DIR / "synth" / "defaults.yaml").read_text())
    assert {key: own[key] for key in SYNTH_PROTOCOL} == SYNTH_PROTOCOL
    assert (own["base_train_size"], own["base_val_size"]) == (own["train_size"], own["val_size"])
    assert (own["base_scale_min"], own["base_scale_max"]) == (own["scale_min"], own["scale_max"])
