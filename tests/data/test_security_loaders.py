"""No file the project opens can run code.

Every loader of a user-supplied file is fed files that would create a marker file if their content were
executed: pickles whose object reduces to ``os.system("touch MARKER")`` or to the pure-Python
``pathlib.Path.touch(MARKER)``, torch checkpoints and ``.npy`` files holding such objects, YAML with
``!!python/object/apply`` tags, and an EPS image (which Pillow would hand to Ghostscript). Each load must fail
with one line naming the file, and the marker must not exist afterwards. ``test_the_malicious_files_are_live``
shows that each file really creates the marker when opened the unsafe way, so these tests fail for a loader
that executes it. The reference ``.pkl`` class-vector tables (numpy arrays pickled by numpy 1.x or 2.x, by
Python 2 or 3) must still load.
"""
from __future__ import annotations

import gzip
import os
import pathlib
import pickle
import shlex
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import EpsImagePlugin, Image

import predict
import test as test_script
from tests.support.engine import tiny_config, tiny_job
from util.runs.checkpoint import load_checkpoint, read_checkpoint_file
from util.common.config import load_config
from util.common.distributed import DistContext
from tools.embed_classes import build_embeddings, read_names_file
from util.data.embeddings import load_class_embeddings
from util.engine.loop import train
from util.common.errors import UserError
from util.data.lists import read_fold_list
from util.data.image_io import image_size, read_image, read_label
from tools.make_lists import make_lists
from tools.checkpoint_import import import_checkpoint
from util.runs.weights import (base_learner_backbone_state, build_mianet, build_pspnet, load_stage2_model,
                           load_base_learner)
from tools.prepare_coco import prepare_coco
from tools.prepare_pascal import prepare_pascal, read_sbd_label
from util.reports.tables import read_results

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "assets"
SYNTH_CONFIG = REPO / "config" / "synth" / "efficientnet_lite0" / "split0.yaml"
CPU = DistContext(0, 1, torch.device("cpu"))
# torch warns before refusing a pickle of protocol > 2 (a raw pickle named .pth)
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


# ---------------------------------------------------------------- malicious files

class RunsShell:
    """Pickles as ``posix.system("touch <marker>")``: a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class TouchesFile:
    """Pickles as ``pathlib.Path.touch(<marker>)``: plain Python, no shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


YAML_PAYLOADS = {  # the same two payloads as YAML tags (PyYAML's python/* tags name a callable and its arguments)
    RunsShell: lambda marker: f"!!python/object/apply:os.system ['touch {marker}']",
    TouchesFile: lambda marker: f"!!python/object/apply:builtins.eval [\"__import__('pathlib').Path('{marker}').touch()\"]",
}


def write_pickle(protocol: int) -> Callable[[Path, object], None]:
    return lambda path, obj: path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_torch(zip_format: bool) -> Callable[[Path, object], None]:
    return lambda path, obj: torch.save({"model": {"w": obj}, "state_dict": {"w": obj}}, path,
                                        _use_new_zipfile_serialization=zip_format)


def write_object_npy(path: Path, obj: object) -> None:
    with path.open("wb") as handle:  # a handle: np.save would add .npy to a name without it
        np.save(handle, np.array([obj], dtype=object), allow_pickle=True)


def write_gzip_pickle(path: Path, obj: object) -> None:
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=4)))


def write_yaml(path: Path, obj: object) -> None:
    path.write_text(f"weight: {YAML_PAYLOADS[type(obj)](obj.marker)}\n")


def unpickle_file(path: Path) -> object:
    with path.open("rb") as handle:
        return pickle.load(handle)


WRITERS = {
    "pickle0": write_pickle(0), "pickle2": write_pickle(2), "pickle4": write_pickle(4), "pickle5": write_pickle(5),
    "torch_zip": write_torch(True), "torch_legacy": write_torch(False), "object_npy": write_object_npy,
    "gzip_pickle": write_gzip_pickle, "yaml_tag": write_yaml,
}
UNSAFE_READERS = {
    **{f"pickle{p}": unpickle_file for p in (0, 2, 4, 5)},
    "torch_zip": lambda path: torch.load(path, weights_only=False),
    "torch_legacy": lambda path: torch.load(path, weights_only=False),
    "object_npy": lambda path: np.load(path, allow_pickle=True),
    "gzip_pickle": lambda path: pickle.loads(gzip.decompress(path.read_bytes())),
    "yaml_tag": lambda path: yaml.unsafe_load(path.read_text()),
}
PICKLES = ("pickle0", "pickle2", "pickle4", "pickle5")
CHECKPOINTS = ("torch_zip", "torch_legacy", "pickle2", "pickle4")
TEXT_LOADER_KINDS = ("pickle0", "pickle4")  # protocol 0 is ASCII text, 4 is binary


class Malicious:
    """Writes files that create ``marker`` when executed; ``refused`` checks a loader did not execute them."""

    def __init__(self, folder: Path, payload_type: type):
        self.folder, self.marker = folder, folder / "CODE_RAN"
        self.payload = payload_type(self.marker)

    def write(self, kind: str, name: str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        WRITERS[kind](path, self.payload)
        return path

    def refused(self, path: Path, call: Callable, *args, **kwargs) -> str:
        """``call`` raises a one-line UserError naming ``path``; the marker does not exist."""
        with pytest.raises(UserError) as info:
            call(*args, **kwargs)
        message = str(info.value)
        assert not self.marker.exists(), f"{path.name}: the file's code ran"
        assert "\n" not in message and path.name in message, message
        return message


@pytest.fixture(params=[RunsShell, TouchesFile], ids=["os.system", "Path.touch"])
def bad(request, tmp_path) -> Malicious:
    return Malicious(tmp_path, request.param)


@pytest.mark.parametrize("kind", sorted(UNSAFE_READERS))
def test_the_malicious_files_are_live(bad, kind):
    path = bad.write(kind, "payload")
    assert not bad.marker.exists()
    UNSAFE_READERS[kind](path)
    assert bad.marker.exists()


# ---------------------------------------------------------------- class-vector tables (.pkl, .npy)

@pytest.mark.parametrize("kind", PICKLES)
def test_pkl_embeddings_are_refused_naming_what_the_pickle_wanted(bad, kind):
    path = bad.write(kind, "word2vec_pascal.pkl")
    message = bad.refused(path, load_class_embeddings, path, "pascal")
    wanted = "posix.system" if isinstance(bad.payload, RunsShell) else \
        ("pathlib.Path.touch" if kind in ("pickle4", "pickle5") else "getattr")  # protocols < 4 pickle a method via getattr
    assert "refuses to load '" in message and wanted in message, message


@pytest.mark.parametrize("kind", ["object_npy", "pickle4"])
def test_npy_embeddings_holding_pickles_are_refused(bad, kind):
    path = bad.write(kind, "table.npy")
    bad.refused(path, load_class_embeddings, path, "pascal")


class ReducesTo:
    """A pickle that calls ``function(*args)`` when loaded."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("obj, refused", [
    (np.array([1.0, "a"], dtype=object), "an array of dtype object"),
    (ReducesTo(np.ndarray, (21, 4), "O"), "holds an array of dtype object"),
    (ReducesTo(np.dtype, "U8"), "an array of dtype <U8"),
    (ReducesTo(__import__("codecs").encode, "data", "zlib"), "'_codecs.encode' of a str to 'zlib'"),
    ([[1.0, 2.0], [3.0]], "holds a list"),
    ({"cat": np.zeros(3)}, "holds a dict"),
])
def test_pkl_holding_anything_but_numbers_is_refused(tmp_path, obj, refused):
    path = tmp_path / "table.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(UserError) as info:
        load_class_embeddings(path, "pascal")
    assert refused in str(info.value) and "table.pkl" in str(info.value) and "\n" not in str(info.value)


def official_table(rows: int, dtype: str) -> np.ndarray:
    """A stand-in for the reference word2vec tables: a float [rows, 300] array with distinct values."""
    return np.random.default_rng(rows).normal(size=(rows, 300)).astype(dtype)


def with_numpy1_names(data: bytes) -> bytes:
    """The pickle as numpy 1.x writes it: ``numpy._core.*`` named ``numpy.core.*``.

    Protocols < 4 name globals as text lines; 4 and 5 as length-prefixed strings inside a length-prefixed
    frame, so both lengths are fixed. (Checked once against numpy 1.26.4: byte-identical for float32/float64
    [21, 300] arrays with protocols 2, 4 and 5.)
    """
    renamed, shrink = data, 0
    for old in (b"numpy._core.multiarray", b"numpy._core.numeric"):
        new = old.replace(b"._core", b".core")
        if data[1] < 4:
            renamed = renamed.replace(old + b"\n", new + b"\n")
            continue
        opcode = bytes([0x8C, len(old)]) + old
        shrink += renamed.count(opcode) * (len(old) - len(new))
        renamed = renamed.replace(opcode, bytes([0x8C, len(new)]) + new)
    if data[1] >= 4:
        frame = int.from_bytes(renamed[3:11], "little") - shrink
        renamed = renamed[:3] + frame.to_bytes(8, "little") + renamed[11:]
    return renamed


@pytest.mark.filterwarnings("ignore:numpy.core.*is deprecated:DeprecationWarning")
@pytest.mark.parametrize("numpy_names", ["numpy2", "numpy1"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("dataset, rows", [("pascal", 21), ("coco", 81)])
def test_official_pkl_tables_still_load(tmp_path, numpy_names, dtype, protocol, dataset, rows):
    table = official_table(rows, dtype)
    data = pickle.dumps(table, protocol=protocol)
    if numpy_names == "numpy1":
        data = with_numpy1_names(data)
        assert b"numpy.core." in data and b"numpy._core" not in data
    np.testing.assert_array_equal(pickle.loads(data), table)  # still a valid pickle of the same array
    path = tmp_path / f"word2vec_{dataset}.pkl"
    path.write_bytes(data)
    loaded = load_class_embeddings(path, dataset)
    assert loaded.dtype == torch.float32 and loaded.shape == (rows, 300)
    np.testing.assert_array_equal(loaded.numpy(), table.astype(np.float32))


@pytest.mark.parametrize("name, shape, dtype", [("py2_protocol2_f4_21x300.pkl", (21, 300), np.float32),
                                                ("py2_protocol0_f8_21x8.pkl", (21, 8), np.float64)])
def test_python2_pkl_tables_load(name, shape, dtype):
    """Pickles written by Python 2's cPickle (tests/assets/make_py2_tables.py): raw bytes as a py2 ``str``."""
    expected = ((np.arange(shape[0] * shape[1]) % 97) / 97.0 - 0.5).astype(dtype).reshape(shape)
    assert b"numpy.core.multiarray" in (DATA / name).read_bytes()
    loaded = load_class_embeddings(DATA / name, "pascal")
    np.testing.assert_array_equal(loaded.numpy(), expected.astype(np.float32))


def test_pkl_list_of_lists_of_floats_loads(tmp_path):
    table = official_table(21, "float64")
    path = tmp_path / "rows.pkl"
    path.write_bytes(pickle.dumps(table.tolist(), protocol=2))
    np.testing.assert_array_equal(load_class_embeddings(path, "pascal").numpy(), table.astype(np.float32))


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_checkpoint_readers_refuse(bad, kind):
    path = bad.write(kind, "best.pth")
    message = bad.refused(path, load_checkpoint, path)
    if kind.startswith("torch"):  # torch's weights-only unpickler names the global it refused
        wanted = "posix.system" if isinstance(bad.payload, RunsShell) else "getattr"
        assert f"refuses to load '{wanted}'" in message, message
    bad.refused(path, read_checkpoint_file, path)


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_resume_refuses(bad, kind):
    path = bad.write(kind, "last.pth")
    cfg = tiny_config(resume=str(path))
    bad.refused(path, train, cfg, tiny_job(cfg, bad.folder / "run"), CPU)


@pytest.mark.parametrize("kind", ["torch_zip", "pickle4"])
def test_weight_refused_by_test_and_predict(bad, kind, capsys):
    path = bad.write(kind, "best.pth")
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--config", str(SYNTH_CONFIG), "weight", str(path), "device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and path.name in lines[0], lines
    assert not bad.marker.exists()
    bad.refused(path, load_stage2_model, load_config(SYNTH_CONFIG), path, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["torch_zip", "pickle4"])
def test_reference_checkpoint_import_and_base_weight_refuse(bad, kind):
    path = bad.write(kind, "train_epoch_50.pth")
    cfg = load_config(SYNTH_CONFIG, {"pretrained_backbone": False})
    out = bad.folder / "out" / "best.pth"
    for reference_kind in ("mianet", "pspnet"):
        bad.refused(path, import_checkpoint, path, reference_kind, cfg, out)
    assert not out.exists()
    model = build_mianet(cfg)
    bad.refused(path, load_base_learner, model, path)
    bad.refused(path, base_learner_backbone_state, path, model.backbone)


@pytest.mark.parametrize("kind", ["torch_zip", "pickle4"])
def test_backbone_weight_refuses(bad, kind):
    path = bad.write(kind, "resnet50_v2.pth")
    cfg = load_config(SYNTH_CONFIG, {"backbone_weight": str(path)})
    bad.refused(path, build_pspnet, cfg)


# ---------------------------------------------------------------- word-vector files of tools.embed_classes

@pytest.mark.parametrize("reader", ["builtin", "auto", "gensim"])
@pytest.mark.parametrize("kind, name", [("pickle4", "vectors.bin"), ("pickle0", "vectors.txt"),
                                        ("pickle4", "vectors.txt"), ("gzip_pickle", "vectors.bin.gz"),
                                        ("gzip_pickle", "vectors.txt.gz")])
def test_word_vector_files_are_parsed_never_unpickled(bad, kind, name, reader):
    """The built-in reader and gensim's ``load_word2vec_format`` parse numbers; neither unpickles."""
    if reader == "gensim":
        pytest.importorskip("gensim", reason="gensim not installed (optional)")
    path = bad.write(kind, name)
    bad.refused(path, build_embeddings, ["cat"], str(path), reader)


def test_class_names_file_is_text(bad):
    path = bad.write("pickle4", "names.txt")
    bad.refused(path, read_names_file, path)


# ---------------------------------------------------------------- configs

def test_config_yaml_tags_are_refused(bad):
    path = bad.write("yaml_tag", "split0.yaml")
    message = bad.refused(path, load_config, path)
    assert "refuses to build" in message and "python/object/apply" in message
    child = bad.folder / "child.yaml"
    child.write_text("_base_: split0.yaml\nshot: 5\n")
    bad.refused(path, load_config, child)


@pytest.mark.parametrize("kind", TEXT_LOADER_KINDS)
def test_config_holding_a_pickle_is_refused(bad, kind):
    path = bad.write(kind, "split0.yaml")
    bad.refused(path, load_config, path)


def test_config_override_with_a_yaml_tag_stays_text(bad):
    text = YAML_PAYLOADS[type(bad.payload)](bad.marker)
    assert load_config(None, ["weight", text]).weight == text
    assert not bad.marker.exists()


# ---------------------------------------------------------------- lists, annotations, results

@pytest.mark.parametrize("kind", TEXT_LOADER_KINDS)
def test_fold_list_is_refused(bad, kind):
    path = bad.write(kind, "lists/synth/fold0/train_min2048.json")
    bad.refused(path, read_fold_list, path, "python -m tools.make_lists ...")


@pytest.mark.parametrize("kind", TEXT_LOADER_KINDS)
def test_pool_list_is_refused(bad, kind):
    path = bad.write(kind, "data/ImageSets/SegmentationAug/train.txt")
    bad.refused(path, make_lists, "pascal", bad.folder / "data", bad.folder / "lists", workers=1)


@pytest.mark.parametrize("kind", TEXT_LOADER_KINDS)
def test_coco_annotations_are_refused(bad, kind):
    path = bad.write(kind, "coco/annotations/instances_train2014.json")
    bad.refused(path, prepare_coco, bad.folder / "coco", workers=1)


@pytest.mark.parametrize("kind", TEXT_LOADER_KINDS)
def test_results_file_is_refused(bad, kind):
    path = bad.write(kind, "results.json")
    bad.refused(path, read_results, path)


def test_voc_id_list_is_refused(bad):
    for folder in ("VOC2012/JPEGImages", "VOC2012/SegmentationClass", "SBD/cls"):
        (bad.folder / folder).mkdir(parents=True)
    ids = bad.write("pickle4", "VOC2012/ImageSets/Segmentation/train.txt")
    bad.refused(ids, prepare_pascal, bad.folder / "VOC2012", bad.folder / "SBD", workers=1)


@pytest.mark.parametrize("kind", TEXT_LOADER_KINDS)
def test_sbd_mat_is_refused(bad, kind):
    mat = bad.write(kind, "SBD/cls/2008_000002.mat")
    bad.refused(mat, read_sbd_label, mat)


# ---------------------------------------------------------------- images and labels

GREY_EPS = b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n\n%ImageData: 8 8 8 1 0 1 1 "x"\nshowpage\n'
RGB_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"


@pytest.fixture
def ghostscript_marker(tmp_path, monkeypatch) -> Path:
    """A ``gs`` program first on PATH that creates a marker file, as a real Ghostscript runs a file's PostScript."""
    marker = tmp_path / "GHOSTSCRIPT_RAN"
    program = tmp_path / "bin" / "gs"
    program.parent.mkdir()
    program.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\necho 10.0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches where it found gs
    return marker


def test_eps_files_reach_ghostscript_when_opened_by_pillow_directly(tmp_path, ghostscript_marker):
    path = tmp_path / "label.png"
    path.write_bytes(GREY_EPS)
    with Image.open(path) as img:
        assert img.format == "EPS" and img.mode == "L"
        with pytest.raises(OSError):  # the stand-in gs renders nothing
            img.load()
    assert ghostscript_marker.exists()


def read_support_mask(path):
    return predict.read_support_mask(path, 255)


@pytest.mark.parametrize("reader, content", [(read_label, GREY_EPS), (image_size, GREY_EPS), (read_image, RGB_EPS),
                                             (read_support_mask, RGB_EPS)])
def test_images_and_labels_never_reach_ghostscript(tmp_path, ghostscript_marker, reader, content):
    path = tmp_path / "2007_000032.png"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        reader(path)
    assert not ghostscript_marker.exists()
    assert "\n" not in str(info.value) and path.name in str(info.value)
