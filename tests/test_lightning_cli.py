"""clip-lightning's own command line runs on kclip, with only the script's name changed.

The pretrained presets it names are replaced by local stand-ins (tiny KerasHub backbones
saved with save_to_preset under the presets' names, found through $KCLIP_PRESET_DIR) with
the real towers' widths (2048 and 768), so that the embedding-dims check is exercised. The
W&B artifact it names is replaced by a local Flickr8k-layout folder.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from kclip.config import parse_config
from kclip.data import sources
from kclip.data.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent
# clip-lightning's README, with `python image_retrieval/cli.py` replaced by `python scripts/train.py`.
README_COMMAND = """fit
    --data.dataset_name flickr8k
    --data.artifact_id wandb/clip.lightning-image_retrieval/flickr-8k:latest
    --data.train_batch_size 128 --data.val_batch_size 128 --data.max_length 200
    --model.image_encoder_alias resnet50 --model.text_encoder_alias distilbert-base-uncased
    --model.image_embedding_dims 2048 --model.text_embedding_dims 768 --model.projection_dims 256
    --trainer.precision 16 --trainer.accelerator gpu --trainer.max_epochs 20
    --trainer.log_every_n_steps 1 --trainer.logger WandbLogger
    --log_prediction_callback.max_matches 5 --log_prediction_callback.max_sentences 20""".split()


def load_train_script():
    spec = importlib.util.spec_from_file_location("kclip_train_script", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_stand_in_presets(folder, captions):
    """Tiny towers as the presets resnet_50_imagenet and distil_bert_base_en_uncased."""
    import keras_hub

    from kclip.models.towers import build_word_vocabulary

    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 512],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        image_shape=(None, None, 3),
    ).save_to_preset(str(folder / "resnet_50_imagenet"))
    keras_hub.layers.ImageConverter(image_size=(32, 32), scale=1 / 255.0).save_to_preset(
        str(folder / "resnet_50_imagenet"))
    tokenizer = keras_hub.models.DistilBertTokenizer(vocabulary=build_word_vocabulary(captions), lowercase=True)
    text = keras_hub.models.DistilBertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_heads=2, hidden_dim=768,
        intermediate_dim=32, max_sequence_length=256, dropout=0.0,
    )
    text.save_to_preset(str(folder / "distil_bert_base_en_uncased"))
    tokenizer.save_to_preset(str(folder / "distil_bert_base_en_uncased"))


def test_readme_flags_map_onto_kclip():
    config = parse_config(README_COMMAND[1:])
    assert config.model.image_encoder == "resnet_50_imagenet"
    assert config.model.text_encoder == "distil_bert_base_en_uncased"
    assert (config.trainer.precision, config.trainer.logger, config.trainer.accelerator) == ("16", "wandb", "gpu")
    assert config.trainer.log_every_n_steps == 1


@pytest.mark.parametrize("lightning, kclip", [("bf16", "mixed_bfloat16"), ("bf16-mixed", "mixed_bfloat16"),
                                              ("32", "float32"), ("32-true", "float32"), ("auto", "auto")])
def test_lightning_precision_names(lightning, kclip):
    assert parse_config(["--trainer.precision", lightning]).trainer.precision == kclip


def test_lightning_yaml_values_are_read(tmp_path):
    path = tmp_path / "lightning.yaml"
    path.write_text("trainer:\n  precision: 16\n  logger: false\n  accelerator: cpu\n")
    config = parse_config(["--config", str(path)])
    assert (config.trainer.precision, config.trainer.logger, config.trainer.accelerator) == ("16", "none", "cpu")
    path.write_text("trainer:\n  precision: 32\n")
    assert parse_config(["--config", str(path)]).trainer.precision == "float32"


@pytest.mark.parametrize("name", ["16", "16-mixed"])
def test_lightning_float16_needs_a_gpu(name, monkeypatch):
    from kclip.utils import precision

    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: (7, 0))
    assert precision.resolve_precision(name) == "mixed_float16"
    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: None)
    # Without a GPU, the CPU's own fast choice: bf16 where native, float32 where it would be emulated.
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (True, "native"))
    with pytest.warns(UserWarning, match="using mixed_bfloat16 on the CPU"):
        assert precision.resolve_precision(name) == "mixed_bfloat16"
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (False, "emulated"))
    with pytest.warns(UserWarning, match="using float32 on the CPU"):
        assert precision.resolve_precision(name) == "float32"


def test_unknown_alias_and_bad_values_are_explained():
    with pytest.raises(ValueError, match="'vit_base_patch16_224' has no matching KerasHub preset"):
        parse_config(["--model.image_encoder_alias", "vit_base_patch16_224"])
    with pytest.raises(ValueError, match="accelerator"):
        parse_config(["--trainer.accelerator", "tpu"])
    with pytest.raises(ValueError, match="precision"):
        parse_config(["--trainer.precision", "64"])


def test_other_lightning_subcommands_point_elsewhere():
    with pytest.raises(SystemExit, match="evaluate.py"):
        load_train_script().main(["test", "--config", "x.yaml"])


def test_clip_lightning_readme_command_trains_on_kclip(tmp_path, monkeypatch, capsys):
    data_dir = write_synthetic_dataset(tmp_path / "flickr8k", num_images=170, image_size=32, seed=0)
    captions = [line.split(",", 1)[1] for line in (data_dir / "captions.txt").read_text().splitlines()[1:]]
    save_stand_in_presets(tmp_path / "presets", captions)
    monkeypatch.setenv("KCLIP_PRESET_DIR", str(tmp_path / "presets"))
    downloads = []
    monkeypatch.setattr(sources, "download_wandb_artifact",
                        lambda artifact_id, root=None: downloads.append(artifact_id) or data_dir)
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)

    with pytest.warns(UserWarning, match="no GPU is visible"):
        load_train_script().main([*README_COMMAND, "--trainer.max_epochs", "1", "--model.image_size", "32"])
    # Lightning's CPU fallback for "16" is bf16; kclip takes it only where the CPU has native bf16
    # (both branches are checked with a faked probe above), so the expectation follows this CPU.
    from kclip.utils import precision

    expected = "mixed_bfloat16" if precision.cpu_bf16_support()[0] else "float32"
    output = capsys.readouterr().out
    assert f"Precision: {expected} (trainer.precision=16 without a GPU" in output
    assert f"precision {expected}" in output

    assert downloads == ["wandb/clip.lightning-image_retrieval/flickr-8k:latest"]
    run = tmp_path / "runs" / "latest"
    saved = json.loads((run / "config.json").read_text())
    assert saved["trainer"]["precision"] == "16"
    assert saved["model"]["image_encoder"] == "resnet_50_imagenet"
    assert (run / "model.keras").is_file()
    metrics = json.loads((run / "test_metrics.json").read_text())
    # The recall training reports is the plain reference's on the saved model and the same test split.
    from recall_reference import recall_of_saved_model

    config = parse_config([*README_COMMAND[1:], "--trainer.max_epochs", "1", "--model.image_size", "32"])
    test_images = sources.load_records(config.data, run, seed=config.trainer.seed).for_split("test")
    assert metrics["num_images"] == len(test_images)
    expected = recall_of_saved_model(run / "model.keras", test_images)
    for key in ("t2i_r@1", "t2i_r@5", "i2t_r@1", "i2t_r@5"):
        assert metrics[key] == pytest.approx(expected[key]), key
    assert list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))


def test_embedding_dims_that_do_not_match_the_towers_name_both_numbers(tmp_path, monkeypatch):
    from kclip.models.towers import build_dual_encoder

    save_stand_in_presets(tmp_path, ["a red circle"])
    monkeypatch.setenv("KCLIP_PRESET_DIR", str(tmp_path))
    config = parse_config(["--model.image_encoder_alias", "resnet50", "--model.text_encoder_alias",
                           "distilbert-base-uncased", "--model.text_embedding_dims", "512"])
    with pytest.raises(ValueError, match=r"text_embedding_dims is 512, but .* gives 768-wide"):
        build_dual_encoder(config.model, sequence_length=16)


def test_accelerator_cpu_places_variables_on_the_cpu(monkeypatch):
    import keras

    from kclip.utils import precision

    with precision.accelerator_scope("cpu"):
        variable = keras.Variable([1.0, 2.0])
    if keras.config.backend() == "torch":
        assert variable.value.device.type == "cpu"
    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: None)
    with pytest.warns(UserWarning, match="no GPU is visible"):
        precision.accelerator_scope("gpu")
