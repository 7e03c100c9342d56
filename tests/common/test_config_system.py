"""The config system: schema defaults, inheritance, overrides, typed validation, saving."""
import re
import shlex
from pathlib import Path

import pytest
import yaml

from util.common.config import ConfigError, limits, load_config, parse_overrides, schema

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_are_the_values_written_in_base_yaml():
    """base.yaml read here as plain YAML: the keys, and a few values and types stated in the docs (``amp`` the
    string "off", which unquoted YAML would read as false; ``weight_decay`` a float, which 1e-4 would not be)."""
    plain = yaml.safe_load((REPO / "config" / "base.yaml").read_text())
    cfg = load_config()
    assert set(cfg) == set(plain) - {"_limits_"} and len(cfg) > 50  # _limits_: the ranges, not a key
    expected = {"shot": 1, "split": 0, "amp": "off", "base_lr": 0.05, "weight_decay": 0.0001, "rotate_min": -10.0,
                "ori_resize": True, "resume": None, "test_seeds": [321], "novel_in_train": "drop_any",
                "train_crop": "uniform_retry", "episode_class": "any_size"}
    for key, value in expected.items():
        assert plain[key] == value and cfg[key] == value and type(cfg[key]) is type(value), key


def documented_overrides() -> list[tuple[str, list[str]]]:
    """(command, its ``key value`` tokens) of every command in README.md and docs/*.md that runs an entry point
    with overrides."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages).replace("\\\n", " ")  # continuation lines joined
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    lines += re.findall(r"`(bash demo\.sh[^`]*)`", text)
    found = []
    for line in lines:
        tokens = shlex.split(line, comments=True)
        for script, skip in (("train.sh", 5), ("test.sh", 5), ("demo.sh", 1)):
            if script in tokens:
                found.append((line, tokens[tokens.index(script) + skip:]))
        if "--config" in tokens and any(t.endswith(("train.py", "test.py", "train_base.py")) for t in tokens):
            found.append((line, tokens[tokens.index("--config") + 2:]))
    return found


def test_every_override_the_docs_show_is_a_key_of_base_yaml():
    plain = yaml.safe_load((REPO / "config" / "base.yaml").read_text())
    commands = documented_overrides()
    keys = {key for _, tokens in commands for key in tokens[::2]}
    assert len(commands) >= 10 and {"shot", "base_lr", "use_gim", "prior_scale", "test_seeds", "vis"} <= keys
    for line, tokens in commands:
        assert len(tokens) % 2 == 0, line
        assert set(tokens[::2]) <= set(plain), line
        load_config(None, tokens)  # the values have the schema's types


def test_inheritance_chain_child_wins(tmp_path):
    write(tmp_path / "a.yaml", "shot: 5\nbase_lr: 0.01\n")
    write(tmp_path / "sub" / "b.yaml", "_base_: ../a.yaml\nbase_lr: 0.02\n")
    write(tmp_path / "sub" / "c.yaml", "_base_: b.yaml\nsplit: 3\n")
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert (cfg.shot, cfg.base_lr, cfg.split) == (5, 0.02, 3)


def test_list_of_bases_merges_left_to_right(tmp_path):
    write(tmp_path / "a.yaml", "shot: 5\nsplit: 1\n")
    write(tmp_path / "b.yaml", "shot: 3\n")
    write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.shot, cfg.split) == (3, 1)


def test_overrides_parse_as_yaml_and_win(tmp_path):
    write(tmp_path / "a.yaml", "shot: 5\n")
    cfg = load_config(tmp_path / "a.yaml", ["shot", "1", "test_seeds", "[1, 2]", "resume", "auto", "base_lr", "1"])
    assert cfg.shot == 1 and cfg.test_seeds == [1, 2] and cfg.resume == "auto"
    assert isinstance(cfg.base_lr, float) and cfg.base_lr == 1.0


def test_unknown_key_names_the_file_and_suggests(tmp_path):
    bad = write(tmp_path / "bad.yaml", "shots: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'shots'; did you mean 'shot'\?"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"override: unknown key 'bas_lr'; did you mean 'base_lr'\?"):
        load_config(None, ["bas_lr", "0.1"])


@pytest.mark.parametrize(
    "key, value, expected",
    [("shot", "five", "must be an int"), ("ori_resize", "1", "must be a bool"),
     ("test_seeds", "[1, x]", r"test_seeds\[1\]' must be an int"), ("resume", "[1]", "string or null")],
)
def test_wrong_types_are_rejected(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [key, value])


def test_odd_override_count_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="'shot' has no value"):
        parse_overrides(["shot"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_yaml_and_cycles(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "x.yaml", "shot: [1\n"))
    write(tmp_path / "p.yaml", "_base_: q.yaml\n")
    write(tmp_path / "q.yaml", "_base_: p.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "p.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["shot", "5"])
    saved = cfg.save(tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(saved.read_text()) == dict(cfg)
    assert load_config(saved) == cfg


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("weight_decay: 5e-4\n")
    cfg = load_config(path, ["base_lr", "1e-3"])
    assert cfg.base_lr == 0.001 and cfg.weight_decay == 0.0005
    with pytest.raises(ConfigError, match="must be a float"):
        load_config(None, ["base_lr", "1e-3x"])


def test_a_replaced_key_says_what_to_write_instead(tmp_path):
    old = write(tmp_path / "old.yaml", "keep_novel_as_background: true\n")
    with pytest.raises(ConfigError, match=r"old\.yaml: unknown key 'keep_novel_as_background' \(it was replaced\); "
                                          r"use 'novel_in_train: keep_as_background' for true"):
        load_config(old)


def test_every_numeric_key_has_a_range_and_every_range_is_checked():
    defaults, ranges = schema(), limits()
    numeric = {k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               or isinstance(v, list) and v and isinstance(v[0], int)}
    assert numeric == set(ranges), "every numeric key of config/base.yaml needs an entry in _limits_ (and only those)"
    assert load_config() == defaults  # the defaults lie inside their ranges
    for key, bounds in ranges.items():
        step = 1 if isinstance(defaults[key], (int, list)) else 0.5
        outside = {"min": bounds.get("min", 0) - step, "max": bounds.get("max", 0) + step,
                   "above": bounds.get("above"), "below": bounds.get("below")}
        for bound in ("min", "max", "above", "below"):
            if bound not in bounds:
                continue
            value = [outside[bound]] if isinstance(defaults[key], list) else outside[bound]
            item = f"{key}[0]" if isinstance(value, list) else key
            with pytest.raises(ConfigError, match=rf"^override: key '{re.escape(item)}' must be .*, got "):
                load_config(None, [key, str(value)])
            if bound in ("min", "max"):
                edge = [bounds[bound]] if isinstance(defaults[key], list) else bounds[bound]
                lows = [low for low, b in ranges.items() if b.get("not_above") == key]  # keys kept at or below this one
                partner = ([bounds["not_above"], str(edge)] if "not_above" in bounds and bound == "max" else
                           [lows[0], str(edge)] if lows and bound == "min" else [])
                assert load_config(None, [key, str(edge), *partner])[key] == edge
        if "min_items" in bounds:
            with pytest.raises(ConfigError, match=rf"^override: key '{key}' must list at least 1 value\(s\), got \[\]$"):
                load_config(None, [key, "[]"])


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", "0", "key 'batch_size' must be >= 1, got 0"),
    ("test_episodes", "0", "key 'test_episodes' must be >= 1, got 0"),
    ("workers", "-1", "key 'workers' must be >= 0, got -1"),
    ("shot", "0", "key 'shot' must be >= 1, got 0"),
    ("split", "4", "key 'split' must be in 0..3, got 4"),
    ("momentum", "1", "key 'momentum' must be >= 0 and < 1, got 1.0"),
    ("base_lr", "0", "key 'base_lr' must be > 0, got 0.0"),
    ("test_seeds", "[1, -2]", "key 'test_seeds[1]' must be in 0..9223372036854775807, got -2"),
])
def test_out_of_range_values_name_the_key_and_the_range(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=f"^override: {re.escape(message)}$"):
        load_config(None, [key, value])
    path = write(tmp_path / "exp.yaml", f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {re.escape(message)}$"):
        load_config(path)


@pytest.mark.parametrize("low, high", [("scale_min", "scale_max"), ("base_scale_min", "base_scale_max"),
                                       ("rotate_min", "rotate_max")])
def test_a_range_written_high_to_low_is_refused_naming_both_keys(tmp_path, low, high):
    assert limits()[low]["not_above"] == high
    with pytest.raises(ConfigError, match=rf"^override: key '{low}' \(2\.0\) must not exceed '{high}' \(1\.0\); "
                                          "a range is written low to high$"):
        load_config(None, [low, "2.0", high, "1.0"])
    path = write(tmp_path / "exp.yaml", f"{high}: 1.0\n")
    with pytest.raises(ConfigError, match=rf"^override and {re.escape(str(path))}: key '{low}'"):
        load_config(path, [low, "2.0"])
    assert load_config(None, [low, "1.0", high, "1.0"])[low] == 1.0


def test_on_off_yes_no_are_words_for_string_keys_and_booleans_for_boolean_keys(tmp_path):
    cfg = load_config(None, ["amp", "off", "use_gim", "no", "use_hpm", "on", "feature_reuse", "false"])
    assert (cfg.amp, cfg.use_gim, cfg.use_hpm, cfg.feature_reuse) == ("off", False, True, False)
    path = write(tmp_path / "exp.yaml", "amp: off\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: key 'amp' must be a string like 'off', got False: "
                                          r"YAML reads an unquoted on/off/yes/no as true/false, so quote it \('off'\)$"):
        load_config(path)


def test_an_empty_config_file_is_refused_naming_it(tmp_path):
    for text in ("", "# only a comment\n"):
        path = write(tmp_path / "empty.yaml", text)
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: the config file is empty; "):
            load_config(path)
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key '_limits_'"):  # ranges live in the schema only
        load_config(write(tmp_path / "mine.yaml", "_limits_: {shot: {min: 0}}\n"))
