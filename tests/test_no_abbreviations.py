"""No entry point takes a shortened or mistyped flag for the option it happens to prefix."""
import importlib.util
from pathlib import Path

import pytest

from kclip.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"kclip_script_{name}_abbrev", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flag, value, prefix_of", [
    ("--output", "x.json", "--output_dir"),
    ("--trainer.max_epoch", "3", "--trainer.max_epochs"),
    ("--data.train_batch", "8", "--data.train_batch_size"),
])
def test_config_parser_refuses_prefixes(flag, value, prefix_of):
    # The full names are accepted, so the failure below is the prefix's alone.
    full = parse_config(["--config", DEMO, prefix_of, value])
    assert full is not None
    with pytest.raises(ValueError, match=f"unrecognized arguments: {flag} {value}"):
        parse_config(["--config", DEMO, flag, value])


def test_train_script_stops_naming_the_key(capsys):
    train = load_script("train")
    with pytest.raises(SystemExit, match="--trainer.max_epoch 3"):
        train.main(["--config", DEMO, "--trainer.max_epoch", "3"])


def test_evaluate_script_does_not_take_a_prefix_of_its_own_flags(tmp_path):
    evaluate = load_script("evaluate")
    arguments, overrides = evaluate.parse_arguments(
        ["--model", "m.keras", "--config", DEMO, "--js", "x.json", "--grid_row", "3"])
    assert arguments.json is None and arguments.grid_rows is None
    assert overrides == ["--js", "x.json", "--grid_row", "3"]
    # ... and the left-overs then fail as unknown config keys, before any model is loaded.
    with pytest.raises(SystemExit, match="unrecognized arguments: --js x.json"):
        evaluate.main(["--model", str(tmp_path / "m.keras"), "--config", DEMO, "--js", "x.json"])


@pytest.mark.parametrize("script, argv, flag", [
    ("index", ["photos/", "--model", "m.keras", "--index", "out/", "--batch", "8"], "--batch"),
    ("index", ["photos/", "--model", "m.keras", "--index", "out/", "--no-prog"], "--no-prog"),
    ("search", ["a dog", "--model", "m.keras", "--index", "out/", "--top", "3"], "--top"),
    ("search", ["a dog", "--model", "m.keras", "--index", "out/", "--tile", "64"], "--tile"),
])
def test_index_and_search_scripts_refuse_prefixes(script, argv, flag, capsys):
    module = load_script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err
