"""Run identity: two COCO split styles in one tree keep apart, a base learner that trained on the run's novel classes
is refused, a checkpoint of another identity is neither tested nor skipped as finished; warnings in one line."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import predict as predict_script
import test as test_script
import train as train_script
from tests.support.data import write_rgb
from tools import checkpoint_import, runguard
from util.runs.checkpoint import (MODEL_IDENTITY_KEYS, check_model_identity, describe_identity, identity_conflict,
                                   load_checkpoint, recorded_identity, run_identity, save_atomic)
from util.runs.folders import base_run_dir, meta_run_dir
from util.data.registry import base_classes
from util.data.benchmarks.coco import COCO_CLASSES
from util.common.config import load_config
from util.common.errors import UserError, cli_entry
from util.data.image_io import write_label
from util.runs.weights import build_mianet, build_pspnet
from util.runs.log import RunLog

REPO = Path(__file__).resolve().parents[2]
COCO0 = str(REPO / "config" / "coco" / "resnet50" / "split0.yaml")
SMALL = ["backbone", "efficientnet_lite0", "pretrained_backbone", "false", "device", "cpu",
         "embedding_file", str(REPO / "embeddings" / "coco_glove50.npy")]
PANET = ["coco_split_style", "panet"]


def user_error(main, argv, capsys) -> str:
    """The one line an entry point prints for a UserError (and exits with 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1].removeprefix("error: ")


def reference_format(state: dict[str, torch.Tensor], renames: dict[str, str]) -> dict[str, torch.Tensor]:
    """Our parameter names written the way the reference repositories name them (what the importer reads)."""
    out = {}
    for key, value in state.items():
        prefix = next((p for p in renames if key.startswith(p)), "")
        out[renames.get(prefix, "") + key[len(prefix):]] = value
    return out


@pytest.fixture
def fwb_tree(tmp_path, monkeypatch):
    """A project folder holding a COCO fwb fold-0 base learner and MIANet, imported from reference-format files
    to where their config puts them."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(COCO0, SMALL)
    torch.manual_seed(0)
    pspnet = reference_format(build_pspnet(cfg)[0].state_dict(), {"backbone.": ""})
    mianet = reference_format(build_mianet(cfg).state_dict(),
                              {"backbone.": "", "ifm.": "", "gig.": "GIG.", "lfg.": "LFG."})
    torch.save({"state_dict": pspnet}, tmp_path / "bam_pspnet.pth")
    torch.save({"state_dict": mianet}, tmp_path / "official_mianet.pth")
    base, meta = base_run_dir(cfg) / "best.pth", meta_run_dir(cfg) / "best.pth"
    checkpoint_import.main(["--config", COCO0, "--pspnet", "bam_pspnet.pth", "--out", str(base), *SMALL])
    checkpoint_import.main(["--config", COCO0, "--mianet", "official_mianet.pth", "--out", str(meta), *SMALL])
    return base, meta


def test_two_coco_split_styles_in_one_tree_keep_apart(fwb_tree, capsys):
    base, meta = fwb_tree
    assert base == Path("initmodel/coco/fwb/split0/efficientnet_lite0/best.pth")
    assert meta == Path("exp/coco/fwb/split0/efficientnet_lite0/1shot/best.pth")
    assert load_checkpoint(base)["identity"] == run_identity(load_config(COCO0, SMALL), "base")
    capsys.readouterr()

    runguard.main(["--stage1-done", "--config", COCO0, "resume", "auto", *SMALL])
    assert capsys.readouterr().out.strip() == str(base)
    runguard.main(["--stage1-done", "--config", COCO0, "resume", "auto", *SMALL, *PANET])
    assert capsys.readouterr().out == ""  # the panet run's stage 1 is not done: train.sh trains it
    assert user_error(train_script.main, ["--config", COCO0, *SMALL, *PANET], capsys) == (
        "stage-1 checkpoint initmodel/coco/panet/split0/efficientnet_lite0/best.pth not found; run stage 1 first "
        "(python train_base.py with the same config) or set base_weight")
    assert user_error(test_script.main, ["--config", COCO0, *SMALL, *PANET], capsys) == (
        "no stage-2 checkpoint exp/coco/panet/split0/efficientnet_lite0/1shot/best.pth: coco fold 0 efficientnet_lite0 "
        "1-shot was never trained there; run train.sh first: bash train.sh coco 0 efficientnet_lite0 1 (with the key "
        "value overrides you train with), or give weight PATH")


def test_a_base_learner_trained_on_the_novel_classes_is_refused(fwb_tree, capsys):
    base, _ = fwb_tree
    # fwb fold 0 trained on every class but 1, 5, 9, ...; panet fold 0 tests classes 1..20
    assert user_error(train_script.main, ["--config", COCO0, *SMALL, *PANET, "base_weight", str(base)], capsys) == (
        f"base learner {base} was trained on 15 of this run's novel classes (bicycle, car, motorcycle, bus, train, "
        "truck, ...): it is the base learner of coco fold 0 (fwb), this run is coco fold 0 (panet); set base_weight "
        "to that fold's base learner, or train it (train_base.py, same config)")
    coco1 = COCO0.replace("split0", "split1")
    message = user_error(train_script.main, ["--config", coco1, *SMALL, "base_weight", str(base)], capsys)
    assert message.startswith(f"base learner {base} was trained on 20 of this run's novel classes (bicycle, bus, ")
    assert "it is the base learner of coco fold 0 (fwb), this run is coco fold 1 (fwb)" in message
    assert user_error(train_script.main, ["--config", COCO0, *SMALL, "base_weight", str(base),
                                          "base_images", "fold_lists"], capsys) == (
        f"base learner {base} was trained with base_images 'all' (this config: base_images 'fold_lists'); set "
        "base_weight to a base learner trained with this config, or train one (train_base.py, same config)")


def test_a_checkpoint_of_another_split_style_is_not_tested(fwb_tree, capsys, tmp_path):
    _, meta = fwb_tree
    assert user_error(test_script.main, ["--config", COCO0, *SMALL, *PANET, "weight", str(meta)], capsys) == (
        f"checkpoint {meta} was trained with coco_split_style 'fwb' (this config: coco_split_style 'panet'); "
        "use the config it was trained with (or those keys), or another checkpoint")
    image, mask = tmp_path / "s.jpg", tmp_path / "s.png"
    write_rgb(image, np.full((20, 30, 3), 128, np.uint8))
    write_label(mask, np.pad(np.full((10, 10), 255, np.uint8), ((5, 5), (10, 10))))
    argv = ["--config", COCO0, "--weight", str(meta), "--support", str(image), str(mask), "--query", str(image),
            "--out", str(tmp_path / "out.png"), *SMALL, "split", "1"]
    assert user_error(predict_script.main, argv, capsys) == (
        f"checkpoint {meta} was trained with split 0 (this config: split 1); "
        "use the config it was trained with (or those keys), or another checkpoint")


def test_a_run_directory_of_another_identity_is_neither_skipped_nor_continued(tmp_path):
    from tests.support.engine import tiny_config, tiny_job
    from tests.engine.test_engine_ddp import CPU
    from util.engine.loop import train

    run = tmp_path / "run"
    train(tiny_config(epochs=1), tiny_job(tiny_config(epochs=1), run), CPU)
    finished = {p.name: p.stat().st_mtime_ns for p in run.glob("*.pth")}
    other = tiny_config(epochs=1, resume="auto", novel_in_train="keep_as_background")
    with pytest.raises(UserError) as refused:
        train(other, tiny_job(other, run), CPU)
    assert str(refused.value) == (
        f"{run / 'best.pth'} holds another stage 2 run (finished, best mIoU "
        f"{load_checkpoint(run / 'best.pth')['best']['miou']:.4f}) trained with novel_in_train 'drop_any' "
        "(this config: novel_in_train 'keep_as_background'); choose another exp_dir, or replace it with overwrite true")
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.pth")} == finished
    same = tiny_config(epochs=1, resume="auto", workers=1)  # not part of the identity: a no-op
    assert train(same, tiny_job(same, run), CPU).iteration == 4
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.pth")} == finished
    replace = tiny_config(epochs=1, resume="auto", overwrite=True, novel_in_train="keep_as_background")
    train(replace, tiny_job(replace, run), CPU)
    assert load_checkpoint(run / "last.pth")["identity"]["novel_in_train"] == "keep_as_background"


def test_a_checkpoint_without_identity_is_used_with_a_warning_naming_what_was_not_checked(fwb_tree):
    _, meta = fwb_tree
    state = load_checkpoint(meta)
    legacy = {key: value for key, value in state.items() if key not in ("identity", "config")}
    save_atomic(legacy, meta)
    with pytest.warns(UserWarning) as caught:
        check_model_identity(load_checkpoint(meta), load_config(COCO0, SMALL), meta)
    assert [str(w.message) for w in caught] == [
        f"checkpoint {meta} does not record its dataset, split, coco_split_style, train_classes, novel_in_train, "
        "base_images, backbone (written before checkpoints recorded what defines them, or a reference file): not "
        "checked against this config"]
    save_atomic(legacy | {"config": state["config"]}, meta)  # an older checkpoint of ours: its config tells
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_model_identity(load_checkpoint(meta), load_config(COCO0, SMALL), meta)
    with pytest.raises(UserError, match="was trained with coco_split_style 'fwb' "):
        check_model_identity(load_checkpoint(meta), load_config(COCO0, [*SMALL, *PANET]), meta)


def test_classes_are_recorded_by_name_and_older_class_ids_are_read_as_names_where_the_list_is_fixed():
    wanted = run_identity(load_config(COCO0, SMALL), "base")
    assert wanted["train_classes"] == [COCO_CLASSES[c - 1] for c in base_classes("coco", 0, "fwb")]
    assert wanted["class_split"] is None and "class_split" not in identity_conflict({}, wanted, MODEL_IDENTITY_KEYS)[1]
    with_ids = wanted | {"train_classes": base_classes("coco", 0, "fwb")}
    assert recorded_identity({"identity": with_ids}) == wanted
    assert identity_conflict(recorded_identity({"identity": with_ids}), wanted, MODEL_IDENTITY_KEYS) == (None, [])
    fewer = wanted | {"train_classes": [n for n in wanted["train_classes"] if n not in ("bicycle", "car", "bus", "truck")]}
    assert identity_conflict(fewer, wanted, MODEL_IDENTITY_KEYS)[0] == (
        "train_classes: 4 of this config's missing (bicycle, car, bus and 1 more)")
    other = fewer | {"train_classes": fewer["train_classes"] + ["person"]}
    assert identity_conflict(other, wanted, MODEL_IDENTITY_KEYS)[0] == (
        "train_classes: 1 not among this config's (person), 4 of this config's missing (bicycle, car, bus and 1 more)")
    reordered = wanted | {"train_classes": wanted["train_classes"][::-1]}
    assert identity_conflict(reordered, wanted, MODEL_IDENTITY_KEYS)[0] == "train_classes in another class-id order"
    assert describe_identity(wanted).startswith("coco fold 0 (fwb), train_classes 60 (bicycle, car, motorcycle and 57 more)")
    # FSS-1000's ids name other classes under another split: an older checkpoint's ids are unknown, not guessed
    fss_ids = {"dataset": "fss", "split": 0, "train_classes": list(range(1, 521)), "backbone": "resnet50"}
    assert recorded_identity({"identity": fss_ids})["train_classes"] is None
    fss_config = {"dataset": "fss", "split": 0, "backbone": "resnet50", "list_root": "nowhere"}
    assert recorded_identity({"config": fss_config})["train_classes"] is None


def test_warnings_are_one_line_on_the_console_and_in_the_run_log(tmp_path, capsys):
    @cli_entry
    def main() -> None:
        warnings.warn("set up:\n  a warning before the log opened")
        log = RunLog(tmp_path, "run", tensorboard=False)
        warnings.warn("during the run", FutureWarning)
        log.close()

    shown = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        main()
    assert warnings.showwarning is shown
    assert capsys.readouterr().err.splitlines() == ["warning: set up: a warning before the log opened",
                                                    "warning (FutureWarning): during the run"]
    logged = (tmp_path / "run.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in logged] == ["warning: set up: a warning before the log opened",
                                                          "warning (FutureWarning): during the run"]
