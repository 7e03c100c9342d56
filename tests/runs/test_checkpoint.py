"""Checkpoint files: atomic writes that survive failures, RNG capture, loading errors, run directories."""
import errno
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from util.runs.checkpoint import (MODEL_CONFIG_KEYS, check_checkpoint_config, load_checkpoint, load_model_state, save_atomic)
from util.runs.folders import base_run_dir, base_weight_path, meta_run_dir, resume_path, stage2_weight
from util.common.runtime import restore_rng_state, rng_state
from util.common.config import load_config
from util.common.errors import UserError


def test_atomic_save_round_trips_and_leaves_no_temp_file(tmp_path):
    path = save_atomic({"model": {"w": torch.arange(3)}, "iteration": 5}, tmp_path / "run" / "last.pth")
    assert load_checkpoint(path)["iteration"] == 5
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_atomic({"model": {"w": torch.ones(2)}, "iteration": 1}, tmp_path / "last.pth")

    def disk_full(obj, handle):
        handle.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match=r"No space left on device\) \(the previous checkpoint is intact\); free disk"):
        save_atomic({"model": {"w": torch.zeros(2)}, "iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_unwritable_directory_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="choose a writable exp_dir"):
        save_atomic({"model": {}}, blocker / "last.pth")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_atomic({"model": {}, "rng": rng_state()}, tmp_path / "c.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_loading_errors_are_actionable(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(UserError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "foreign.pth")


def test_model_mismatch_names_the_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1), nn.Linear(1, 1)).state_dict()
    with pytest.raises(UserError, match=r"unexpected 2: 2\.weight, 2\.bias; shape mismatch 3: 0\.weight \(4, 2\) vs \(3, 2\)"):
        load_model_state(model, state, "other.pth")
    with pytest.raises(UserError, match=r"made with backbone='vgg16_bn' \(now 'resnet50'\)"):
        check_checkpoint_config({"config": {"backbone": "vgg16_bn", "dataset": "pascal"}},
                                load_config(None, ["dataset", "pascal"]), "x.pth", ("dataset", "backbone"))
    synth = load_config("config/synth/efficientnet_lite0/split0.yaml", [])
    with pytest.raises(UserError, match=r"made with prior_scale=1\.0 \(now 100\.0\)"):
        check_checkpoint_config({"config": dict(synth) | {"prior_scale": 1.0}}, synth, "x.pth", MODEL_CONFIG_KEYS)
    check_checkpoint_config({"config": {"dataset": "synth"}}, synth, "old.pth", MODEL_CONFIG_KEYS)  # keys it lacks pass


def test_run_directories_and_resume_paths(tmp_path):
    cfg = load_config(None, ["dataset", "pascal", "split", "2", "backbone", "vgg16_bn", "shot", "5"])
    assert base_run_dir(cfg) == Path("initmodel/pascal/split2/vgg16_bn")
    assert base_weight_path(cfg) == Path("initmodel/pascal/split2/vgg16_bn/best.pth")
    assert meta_run_dir(cfg) == Path("exp/pascal/split2/vgg16_bn/5shot")
    assert resume_path(None, tmp_path) is None
    assert resume_path("auto", tmp_path) is None
    save_atomic({"model": {}}, tmp_path / "last.pth")
    assert resume_path("auto", tmp_path) == tmp_path / "last.pth"
    with pytest.raises(UserError, match="'resume'"):
        resume_path(str(tmp_path / "nope.pth"), tmp_path)


PASCAL_SPLIT2 = str(Path(__file__).resolve().parents[2] / "config" / "pascal" / "resnet50" / "split2.yaml")


def test_testing_a_fold_never_trained_gives_the_train_sh_command(tmp_path, monkeypatch, capsys):
    import predict
    import test as test_script

    monkeypatch.chdir(tmp_path)
    expected = ("error: no stage-2 checkpoint exp/pascal/split2/resnet50/5shot/best.pth: pascal fold 2 resnet50 5-shot "
                "was never trained there; run train.sh first: bash train.sh pascal 2 resnet50 5 (with the key value "
                "overrides you train with), or give weight PATH")
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--config", PASCAL_SPLIT2, "shot", "5", "device", "cpu"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [expected]
    with pytest.raises(SystemExit) as exit_info:  # predict.py says it before reading any image
        predict.main(["--config", PASCAL_SPLIT2, "--support", "photo.jpg", "mask.png", "--query", "photo.jpg",
                      "--out", "out.png", "shot", "5"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [expected]

    save_atomic({"model": {}}, tmp_path / "runs" / "last.pth")  # a run that has not validated yet
    with pytest.raises(UserError) as info:
        stage2_weight(load_config(PASCAL_SPLIT2, {"exp_dir": "runs"}))
    assert str(info.value) == ("no stage-2 checkpoint runs/best.pth: the run in runs has not validated yet (it has "
                               "last.pth, no best.pth); let it finish: bash train.sh pascal 2 resnet50 1 exp_dir runs "
                               "resumes it (with the key value overrides you train with), or give weight PATH")
    assert stage2_weight(load_config(PASCAL_SPLIT2, {"weight": "any.pth"})) == Path("any.pth")
