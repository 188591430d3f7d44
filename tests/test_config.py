from pathlib import Path

import pytest

from kclip.config import Config, parse_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["demo", "flickr8k", "flickr30k"])
def test_shipped_configs_parse(name):
    config = parse_config(["--config", str(CONFIGS / f"{name}.yaml")])
    assert isinstance(config, Config)
    assert config.output_dir == f"runs/{name}"


def test_flickr_configs_keep_the_seed_settings():
    config = parse_config(["--config", str(CONFIGS / "flickr8k.yaml")])
    assert config.model.image_encoder == "resnet_50_imagenet"
    assert config.model.text_encoder == "distil_bert_base_en_uncased"
    assert config.model.projection_dims == 256
    assert config.data.train_batch_size == 128
    assert config.trainer.max_epochs == 20
    assert (config.model.image_encoder_lr, config.model.text_encoder_lr, config.model.head_lr) == (
        1e-4,
        1e-5,
        1e-3,
    )


def test_dotted_overrides_win_over_the_file():
    config = parse_config(
        [
            "--config", str(CONFIGS / "flickr8k.yaml"),
            "--data.train_batch_size", "64",
            "--model.projection_dims", "128",
            "--trainer.max_epochs", "1",
            "--output_dir", "elsewhere",
        ]
    )
    assert config.data.train_batch_size == 64
    assert config.model.projection_dims == 128
    assert config.trainer.max_epochs == 1
    assert config.output_dir == "elsewhere"
    assert config.model.image_encoder == "resnet_50_imagenet"  # untouched


def test_dotted_overrides_inside_a_backbone_config_keep_their_types():
    config = parse_config([
        "--config", str(CONFIGS / "demo.yaml"),
        "--model.text_encoder_config.num_layers", "1",
        "--model.text_encoder_config.dropout", "0.2",
        "--model.image_encoder_config.input_conv_kernel_sizes", "[7]",
        "--model.image_encoder_config.block_type", "bottleneck_block",
    ])
    text, image = config.model.text_encoder_config, config.model.image_encoder_config
    assert text["num_layers"] == 1 and isinstance(text["num_layers"], int)
    assert text["dropout"] == 0.2
    assert image["input_conv_kernel_sizes"] == [7]
    assert image["block_type"] == "bottleneck_block"
    assert text["hidden_dim"] == 128  # the file's other keys stay


def test_unknown_key_on_the_command_line_is_named():
    with pytest.raises(ValueError, match="train_bach_size"):
        parse_config(["--data.train_bach_size", "64"])


def test_unknown_key_in_a_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  projection_dim: 128\n")
    with pytest.raises(ValueError, match="projection_dim"):
        parse_config(["--config", str(path)])


def test_bad_value_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        parse_config(["--trainer.precision", "fp8"])
