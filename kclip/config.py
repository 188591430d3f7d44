"""Run configuration: typed sections, YAML files and dotted command-line overrides.

jsonargparse (what LightningCLI uses) turns these dataclasses into a parser, so
`--config configs/flickr8k.yaml --data.train_batch_size 64` works as in the seed,
and an unknown or mistyped key is rejected with its name.
"""

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser


@dataclass
class ModelConfig:
    """The two towers, the heads and the loss."""

    image_encoder: str = "resnet_50_imagenet"
    """A KerasHub preset (name, hf://..., kaggle://... or local folder), or a backbone class name when `image_encoder_config` is set."""
    image_encoder_config: Optional[dict] = None
    """Constructor arguments to build the image backbone from scratch instead of a preset."""
    image_encoder_trainable: bool = True
    image_size: int = 224
    image_data_format: Literal["auto", "channels_first", "channels_last"] = "auto"
    """auto: channels_first on the torch backend, where it is faster."""
    text_encoder: str = "distil_bert_base_en_uncased"
    text_encoder_config: Optional[dict] = None
    text_encoder_trainable: bool = True
    vocabulary: Optional[str] = None
    """Vocabulary file for a from-scratch text tower; when unset, built from the training captions."""
    vocabulary_size: int = 2000
    projection_dims: int = 256
    text_pooling: Literal["first", "mean"] = "first"
    """The text tower's sentence vector: the first token's (DistilBERT/CLIP) or the mean over real tokens."""
    dropout: float = 0.1
    loss: Literal["clip", "soft_targets", "siglip"] = "clip"
    """clip: softmax over the batch, learnable temperature; siglip: pairwise sigmoid with learnable temperature and bias (Zhai et al. 2023); soft_targets: the seed's loss."""
    temperature: float = 1.0
    """Fixed temperature of the soft_targets loss (the clip loss learns its own)."""
    image_encoder_lr: float = 1e-4
    text_encoder_lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.0
    # --- clip-lightning compatibility (its command-line flags, mapped onto the above) ---
    image_encoder_alias: Optional[str] = None
    """clip-lightning's timm name (resnet50); sets image_encoder to the matching KerasHub preset."""
    text_encoder_alias: Optional[str] = None
    """clip-lightning's Hugging Face name (distilbert-base-uncased); sets text_encoder likewise."""
    image_embedding_dims: Optional[int] = None
    """Expected width of the image tower's pooled features (2048 for ResNet50); checked when the model is built."""
    text_embedding_dims: Optional[int] = None
    """Expected width of the text tower's features (768 for DistilBERT base); checked when the model is built."""


@dataclass
class DataConfig:
    """Where the captioned images come from and how they are batched."""

    dataset_name: Literal["embedded", "flickr8k", "flickr30k", "custom", "emoji"] = "embedded"
    dir: Optional[str] = None
    """Data folder; the embedded and emoji sets are generated there (default: data/embedded, data/emoji)."""
    artifact_id: Optional[str] = None
    """A W&B dataset artifact to download into `dir`, e.g. wandb/clip.lightning/flickr-8k:latest."""
    num_images: int = 3000
    """Size of the embedded set."""
    train_batch_size: int = 128
    val_batch_size: int = 128
    max_length: int = 64
    """Tokens per caption, [CLS] and [SEP] included; longer captions are truncated."""
    dynamic_padding: bool = True
    """Pad each batch only to its longest caption (rounded up to 8), not to max_length."""
    captions: Literal["one", "all"] = "one"
    """one: each epoch shows every image once with a random caption; all: every caption."""
    augment: bool = False
    cache: bool = False
    """Keep decoded, resized images in memory after the first epoch."""
    feature_cache: Literal["auto", "disk", "memory", "off"] = "auto"
    """Frozen image tower and no augment: train the heads on pooled tower features computed once
    (auto/disk: also kept on disk under $KCLIP_CACHE_DIR/features, reused by later runs)."""
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    max_bad_fraction: float = 0.05
    kaggle_handle: Optional[str] = None
    """A Kaggle dataset to download with kagglehub, e.g. adityajn105/flickr8k (Kaggle Flickr8k layout) or hsankesara/flickr-image-dataset (Flickr30k)."""
    tfds: bool = True
    """Prepare the data once into TFDS shards (<dir>/.kclip_tfds, reused while unchanged) and train from them; False decodes loose files every epoch."""
    tfds_dir: Optional[str] = None
    """Where prepared shards go (default <data folder>/.kclip_tfds)."""
    loader: Literal["auto", "tfdata", "pydataset"] = "auto"
    """tfdata: tf.data (needs TensorFlow; reads TFDS shards when data.tfds); pydataset: worker processes, no TensorFlow,
    loose files (a torch DataLoader on torch, a keras PyDataset elsewhere); auto: tfdata when TensorFlow is installed."""
    loader_workers: Optional[int] = None
    """Worker processes of the pydataset loader; None: every core but one, at most 16; 0: in the training process."""
    prepared_max_side: int = 512
    """Longer side of the images stored in the shards."""
    shuffle_buffer: int = 4096
    """Prepared images held for shuffling, on top of shuffling the shard files."""
    image_column: str = "image"
    caption_column: str = "caption"
    """Column names of a custom CSV/TSV/JSONL caption file."""


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    steps_per_epoch: Optional[int] = None
    max_train_minutes: Optional[float] = None
    """Stop training after this many minutes of wall-clock time; a cosine schedule then follows the clock."""
    precision: Literal[
        "auto", "float32", "mixed_bfloat16", "mixed_float16", "16", "16-mixed", "bf16", "bf16-mixed", "32", "32-true",
        16, 32,
    ] = "auto"
    """auto: by the hardware. CPU: mixed_bfloat16 where bf16 is native (avx512_bf16, amx_bf16, ARM bf16), else
    float32. GPU: mixed_bfloat16 from compute capability 8.0, else mixed_float16. Lightning's names map: bf16 and
    bf16-mixed to mixed_bfloat16, 32 and 32-true to float32; 16 and 16-mixed to mixed_float16 on a GPU and, with a
    warning, to the CPU's own choice on a CPU."""
    logger: Literal["wandb", "none", "WandbLogger", "False", False] = "wandb"
    """wandb: online when logged in, else offline (sync later); none: no W&B at all."""
    wandb_project: str = "kclip"
    seed: int = 42
    eval_every_n_epochs: int = 1
    """Validation recall (val_t2i_r@k, val_i2t_r@k, val_rsum) every N epochs and after the last one."""
    lr_schedule: Literal["none", "plateau", "cosine"] = "plateau"
    """plateau: ReduceLROnPlateau on val_rsum; cosine: linear warmup, then cosine decay to zero."""
    plateau_factor: float = 0.2
    plateau_patience: int = 3
    """Evaluations without a better val_rsum before the learning rate is cut."""
    warmup_epochs: float = 1.0
    """Linear warmup of the cosine schedule, in epochs (fractions allowed)."""
    early_stopping_patience: Optional[int] = None
    """Stop after this many evaluations without a better val_rsum; None: never stop early."""
    terminate_on_nan: bool = True
    fused_batch_norm: bool = True
    """On torch, run BatchNormalization as torch's fused kernel while training (same math, faster)."""
    release_intermediates: bool = True
    """Free each activation of a functional model after its last use while training (same math, less memory)."""
    fast_conv_kernels: bool = True
    """On torch, keep conv kernels in torch's own memory order while training (same values, no layout copies)."""
    fused_attention: bool = True
    """On torch, attention with dropout runs as torch's fused kernel while training (same math, faster)."""
    fold_pool_padding: bool = True
    """On torch, a ResNet stem's zero padding runs inside its max pooling while training (same math, faster)."""
    inplace_activations: bool = True
    """On torch, ReLUs after batch norm or a residual sum, and residual sums, write into their input while training (same math)."""
    keep_freed_memory: bool = False
    """On torch with glibc, freed memory stays in the process between steps instead of being faulted in again.

    Faster (the demo's float32 step 0.81-0.88x), but at the full size the heap kept growing, so off by default;
    configs/demo.yaml turns it on (its heap settles within 2.6% of the peak without it)."""
    # --- Backends and devices ---
    distribution: Literal["none", "data_parallel"] = "none"
    """data_parallel: on JAX, keras.distribution.DataParallel over every local device; on torch, one process per device
    launched by `torchrun --nproc_per_node N` (torch.distributed: NCCL on GPUs, gloo on CPUs). data.train_batch_size is
    the global batch, and the loss sees all of it."""
    contrastive_chunk_size: Optional[int] = None
    """Gradient caching: the towers run on chunks of this many rows, in two passes, while the loss sees the whole batch
    (each process's data.train_batch_size / processes rows under data parallel, which it must divide); None: no chunks."""
    jit_compile: Union[bool, Literal["auto"]] = "auto"
    """Compile the train step with XLA (JAX, TensorFlow) or torch.compile; auto: on for JAX only, where it was measured faster."""
    checkpoint_model_to_wandb: bool = False
    """Upload the model to W&B each epoch (WandbModelCheckpoint): the whole file every time."""
    # --- clip-lightning compatibility ---
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    """auto: a GPU when one is visible. cpu keeps the run on the CPU; gpu/cuda warn and fall back to the CPU when none is visible."""
    log_every_n_steps: Optional[int] = None
    """Send training metrics to W&B every N steps; None: once per epoch."""


@dataclass
class PredictionCallbackConfig:
    max_matches: int = 5
    max_sentences: int = 20


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log_prediction_callback: PredictionCallbackConfig = field(
        default_factory=PredictionCallbackConfig
    )
    output_dir: str = "runs/latest"
    demo_queries: list[str] = field(default_factory=list)
    """Free-text searches scripts/demo.py runs on the held-out pictures after training."""


def build_parser(description="Train a kclip dual encoder."):
    # allow_abbrev=False: a mistyped or shortened key (--output, --trainer.max_epoch) must stop the run,
    # not be taken for the one option it happens to prefix.
    parser = ArgumentParser(description=description, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML config file.")
    parser.add_class_arguments(Config, as_positional=False, fail_untyped=True)
    return parser


def parse_config(args=None, parser=None):
    """Command-line arguments (and the files they name) -> `Config`.

    Raises ValueError naming the offending key or value.
    """
    parser = parser or build_parser()
    try:
        namespace = parser.parse_args(args)
    except Exception as error:  # jsonargparse raises its own ArgumentError subclasses
        raise ValueError(f"Bad configuration: {error}") from error
    return namespace_to_config(parser, namespace)


def _typed_backbone_values(config):
    """A dotted flag into a free-form backbone dict (`--model.text_encoder_config.num_layers 1`)
    reaches it as the string "1"; read such strings as YAML, as the config file's values are."""
    if not config:
        return config
    typed = {}
    for key, value in config.items():
        if isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            value = value if isinstance(parsed, str) or parsed is None else parsed
        typed[key] = value
    return typed


def _at_least(low):
    return lambda value: value >= low, f">= {low}"


def _optional(rule):
    check, text = rule
    return lambda value: value is None or check(value), f"None or {text}"


# (section, key, rule): values the types admit that no run can use; checked at parse time so the
# error names the key instead of surfacing as a traceback (or an untrained model) minutes later.
VALUE_RANGES = [
    ("model", "image_size", _at_least(8)),
    ("model", "projection_dims", _at_least(1)),
    ("model", "vocabulary_size", _at_least(1)),
    ("model", "dropout", (lambda value: 0 <= value < 1, "from 0 to below 1")),
    ("model", "temperature", (lambda value: value > 0, "> 0")),
    ("model", "image_encoder_lr", _at_least(0)),
    ("model", "text_encoder_lr", _at_least(0)),
    ("model", "head_lr", _at_least(0)),
    ("model", "weight_decay", _at_least(0)),
    ("data", "num_images", _at_least(1)),
    ("data", "train_batch_size", _at_least(1)),
    ("data", "val_batch_size", _at_least(1)),
    ("data", "max_length", (lambda value: value >= 3, ">= 3 (room for [CLS], one token and [SEP])")),
    ("data", "max_bad_fraction", (lambda value: 0 <= value <= 1, "from 0 to 1")),
    ("data", "prepared_max_side", _at_least(1)),
    ("data", "shuffle_buffer", _at_least(0)),
    ("trainer", "max_epochs", _at_least(1)),
    ("trainer", "steps_per_epoch", _optional(_at_least(1))),
    ("trainer", "max_train_minutes", _optional((lambda value: value > 0, "> 0"))),
    ("trainer", "eval_every_n_epochs", _at_least(1)),
    ("trainer", "plateau_factor", (lambda value: 0 < value < 1, "above 0 and below 1")),
    ("trainer", "plateau_patience", _at_least(0)),
    ("trainer", "warmup_epochs", _at_least(0)),
    ("trainer", "early_stopping_patience", _optional(_at_least(1))),
    ("trainer", "log_every_n_steps", _optional(_at_least(1))),
    ("log_prediction_callback", "max_matches", _at_least(1)),
    ("log_prediction_callback", "max_sentences", _at_least(1)),
]


def check_value_ranges(config):
    """Raises ValueError naming the first key of VALUE_RANGES outside its range (NaN never passes)."""
    for section, key, (check, text) in VALUE_RANGES:
        value = getattr(getattr(config, section), key)
        try:
            good = bool(check(value))
        except TypeError:
            good = False
        if not good:
            raise ValueError(f"{section}.{key} must be {text}, got {value!r}.")
    if not str(config.output_dir).strip():
        raise ValueError(f"output_dir must name a folder, got {config.output_dir!r}.")
    return config


def check_ranges(config):
    """Raises ValueError for values the types admit but training cannot use; returns `config`."""
    check_value_ranges(config)
    chunk, batch = config.trainer.contrastive_chunk_size, config.data.train_batch_size
    if chunk is not None and (chunk < 1 or batch % chunk):
        raise ValueError(f"trainer.contrastive_chunk_size={chunk} must be a positive divisor of "
                         f"data.train_batch_size={batch}.")
    return config


def namespace_to_config(parser, namespace):
    values = namespace.as_dict()
    for key in ("image_encoder_config", "text_encoder_config"):
        values["model"][key] = _typed_backbone_values(values["model"].get(key))
    return check_ranges(apply_lightning_names(Config(
        model=ModelConfig(**values["model"]),
        data=DataConfig(**values["data"]),
        trainer=TrainerConfig(**values["trainer"]),
        log_prediction_callback=PredictionCallbackConfig(**values["log_prediction_callback"]),
        output_dir=values["output_dir"],
        demo_queries=list(values.get("demo_queries") or []),
    )))


# "16" and "16-mixed" stay as they are: they depend on the hardware (kclip.utils.precision).
LIGHTNING_PRECISION = {"bf16": "mixed_bfloat16", "bf16-mixed": "mixed_bfloat16", "32": "float32", "32-true": "float32"}
LIGHTNING_LOGGERS = {"WandbLogger": "wandb", "False": "none"}


def apply_lightning_names(config):
    """Maps clip-lightning's flag values onto kclip's own (in place); returns `config`.

    Aliases become KerasHub preset names (an unknown alias is an error naming the known
    ones), precision and logger names become kclip's.
    """
    model, trainer = config.model, config.trainer
    for kind in ("image", "text"):
        alias = getattr(model, f"{kind}_encoder_alias")
        if alias is None:
            continue
        from kclip.models.towers import resolve_alias  # imports keras: only when an alias is used

        if getattr(model, f"{kind}_encoder_config") is not None:
            raise ValueError(
                f"model.{kind}_encoder_alias={alias!r} names a pretrained preset, but "
                f"model.{kind}_encoder_config asks for a from-scratch tower; set only one."
            )
        setattr(model, f"{kind}_encoder", resolve_alias(alias, kind))
    trainer.precision = str(trainer.precision)  # YAML reads Lightning's `precision: 16` as a number
    trainer.precision = LIGHTNING_PRECISION.get(trainer.precision, trainer.precision)
    trainer.logger = LIGHTNING_LOGGERS.get(str(trainer.logger), trainer.logger)
    return config
