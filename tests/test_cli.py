"""The `kclip` command: every subcommand's --help, and one real call of each on tiny inputs."""
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from helpers import tiny_config
from kclip import cli
from kclip.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
# The flag each subcommand's help must list: its own, not only argparse's -h.
OWN_FLAG = {"demo": "--trainer.max_epochs", "train": "--trainer.max_epochs", "evaluate": "--grid_rows",
            "index": "--lock-timeout", "search": "--top-k", "serve": "--max-upload-mb", "convert": "--tokenizer"}


def test_the_console_script_lists_every_subcommand():
    """The installed entry point ([project.scripts] kclip = kclip.cli:main), run as a user runs it."""
    executable = Path(sys.executable).with_name("kclip")
    if not executable.exists():
        pytest.fail(f"no {executable}: reinstall kclip (pip install -e .) so that its console script is made")
    done = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["demo", "train", "evaluate", "index", "search", "serve", "convert"]
    assert set(listed) == set(OWN_FLAG)


@pytest.mark.parametrize("name", sorted(OWN_FLAG))
def test_each_subcommand_help_lists_its_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = cli.main([name, "--help"])
        raise SystemExit(code)  # demo prints its help and returns instead of exiting
    assert exit_info.value.code in (0, None)
    output = capsys.readouterr().out
    assert OWN_FLAG[name] in output
    assert f"kclip {name}" in output  # the usage line names the subcommand, not a script


def test_unknown_or_missing_subcommand_is_refused(capsys):
    assert cli.main(["fit"]) == 2
    assert "unknown subcommand 'fit'" in capsys.readouterr().err
    assert cli.main([]) == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`kclip train` on the tiny config: (run folder, config path)."""
    root = tmp_path_factory.mktemp("cli")
    config = tiny_config(root / "run", root / "data")
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(asdict(config)))
    assert cli.main(["train", "--config", str(config_path)]) == 0
    return root / "run", config_path


def test_train_writes_a_model_that_loads(trained):
    import kclip

    run, _ = trained
    model = kclip.load_model(run / "model.keras")
    assert model.encode_text(["a red circle"]).shape == (1, 16)  # tiny config: 16 projection dims


def test_evaluate_recall_matches_the_reference_on_the_same_embeddings(trained, tmp_path):
    import kclip
    from kclip.config import parse_config
    from kclip.data.sources import load_records
    from recall_reference import recall

    run, config_path = trained
    json_path = tmp_path / "test.json"
    assert cli.main(["evaluate", "--model", str(run / "model.keras"), "--config", str(config_path),
                     "--json", str(json_path)]) == 0
    written = json.loads(json_path.read_text())
    config = parse_config(["--config", str(config_path)])
    images = load_records(config.data, run, seed=config.trainer.seed).for_split("test")
    model = kclip.load_model(run / "model.keras")
    image_embeddings = model.encode_image([image.image_path for image in images])
    captions = [caption for image in images for caption in image.captions]
    owners = [number for number, image in enumerate(images) for _ in image.captions]
    expected = recall(image_embeddings, model.encode_text(captions), owners)
    assert written["num_images"] == len(images) and written["num_captions"] == len(captions)
    for key, value in expected.items():
        assert written[key] == pytest.approx(value, abs=1e-9), key


@pytest.fixture(scope="module")
def photos_and_index(trained, tmp_path_factory):
    """`kclip index` of six solid-colour photos with the trained model: (photos, index folder)."""
    from serve_fixtures import PHOTO_COLOURS, write_photos

    root = tmp_path_factory.mktemp("cli-index")
    photos = write_photos(root / "photos")
    index_dir = root / "index"
    run, _ = trained
    assert cli.main(["index", str(photos), "--model", str(run / "model.keras"), "--index", str(index_dir),
                     "--no-progress"]) == 0
    from kclip.index.index import Index

    assert len(Index.load(index_dir)) == len(PHOTO_COLOURS)
    return photos, index_dir


def test_search_by_example_finds_the_photo_itself_first(trained, photos_and_index, capsys):
    photos, index_dir = photos_and_index
    run, _ = trained
    query = photos / "nested" / "green.png"
    capsys.readouterr()
    assert cli.main(["search", str(query), "--model", str(run / "model.keras"), "--index", str(index_dir),
                     "--top-k", "3"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [int(line[0]) for line in lines] == [1, 2, 3]
    assert Path(lines[0][2]) == query.resolve()
    assert float(lines[0][1]) == pytest.approx(1.0, abs=1e-2)  # an image against itself: cosine 1


def test_serve_answers_a_query_over_http(trained, photos_and_index):
    """`kclip serve`, the installed console script, in its own process on a free loopback port."""
    import time

    import httpx

    from kclip.serve.server import free_port

    photos, index_dir = photos_and_index
    run, _ = trained
    port = free_port()
    command = [str(Path(sys.executable).with_name("kclip")), "serve", "--model", str(run / "model.keras"),
               "--index", str(index_dir), "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": "a red circle", "k": 2},
                                   timeout=30)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start: {process.communicate()[0]}")
                time.sleep(0.3)
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 2
    assert f"kclip search page: http://127.0.0.1:{port}/" in output


@pytest.mark.torch_only
def test_convert_writes_a_model_from_a_lightning_checkpoint(tmp_path, capsys):
    pytest.importorskip("transformers")
    import keras

    from test_convert import lightning_checkpoint

    path, _, tokenizer_dir, _ = lightning_checkpoint(tmp_path)
    output = tmp_path / "converted.keras"
    assert cli.main(["convert", str(path), "--tokenizer", str(tokenizer_dir), "--output", str(output),
                     "--image-size", "64"]) == 0
    assert f"Wrote {output}" in capsys.readouterr().out
    assert keras.saving.load_model(output).backbone.projection_dim == 16  # the checkpoint's projection_dims


def test_demo_trains_indexes_and_searches(tmp_path, capsys):
    """`kclip demo` on the demo config shrunk to one epoch of 60 images: its index holds the test split."""
    from kclip.config import parse_config
    from kclip.data.sources import load_records

    overrides = ["--trainer.max_epochs", "1", "--data.num_images", "60", "--data.train_batch_size", "16",
                 "--data.val_batch_size", "16", "--model.image_size", "32", "--output_dir", str(tmp_path / "run"),
                 "--data.dir", str(tmp_path / "data")]
    assert cli.main(["demo", *overrides]) == 0
    output = capsys.readouterr().out
    config = parse_config(["--config", str(ROOT / "configs" / "demo.yaml"), *overrides])
    test_images = load_records(config.data, tmp_path / "run", seed=config.trainer.seed).for_split("test")
    assert f"Indexed {len(test_images)} held-out images" in output
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert f"Test text->image R@5: {metrics['t2i_r@5']:.3f}" in output
    assert (tmp_path / "run" / "search_grid.png").is_file()


def test_the_scripts_are_the_same_commands():
    """scripts/*.py only forward to kclip.commands: each one's main is the subcommand's."""
    import importlib.util

    for script, name in [("train", "train"), ("evaluate", "evaluate"), ("index", "index"), ("search", "search"),
                         ("serve", "serve"), ("convert_checkpoint", "convert"), ("demo", "demo")]:
        spec = importlib.util.spec_from_file_location(f"kclip_cli_script_{script}", ROOT / "scripts" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        command = __import__(COMMANDS[name][0], fromlist=["main"])
        assert module.main is command.main, script
