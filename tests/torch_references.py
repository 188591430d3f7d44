"""PyTorch models in the formats users hold, for numerical-equivalence tests.

`TimmLayoutResNet` has timm's module and parameter names (conv1, bn1, layer1.0.conv1,
layer1.0.downsample.0, ...), so its state dict is what `timm.create_model("resnet50",
num_classes=0)` saves; it stands in for timm where timm cannot be imported (timm imports
torchvision, whose wheel must match torch's build). `ClipLightningModel` has the module
structure of clip-lightning's `CLIPDualEncoderModel` (image_encoder.model,
text_encoder.model, image_projection, text_projection).
"""

import json

import torch
import torch.nn.functional as F
from torch import nn

TIMM_RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}
IMAGENET_CFG = {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.95,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class _Block(nn.Module):
    def __init__(self, kind, in_channels, filters, stride):
        super().__init__()
        self.kind = kind
        out_channels = filters * (4 if kind == "bottleneck" else 1)
        if kind == "bottleneck":
            self.conv1 = nn.Conv2d(in_channels, filters, 1, bias=False)
            self.conv2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False)
            self.conv3 = nn.Conv2d(filters, out_channels, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out_channels)
        else:
            self.conv1 = nn.Conv2d(in_channels, filters, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.bn2 = nn.BatchNorm2d(filters)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.out_channels = out_channels

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.kind == "bottleneck":
            out = self.bn3(self.conv3(F.relu(out)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TimmLayoutResNet(nn.Module):
    """timm's ResNet with num_classes=0 and global average pooling: images -> pooled features."""

    def __init__(self, architecture="resnet50"):
        super().__init__()
        kind, blocks = TIMM_RESNETS[architecture]
        self.architecture = architecture
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        channels = 64
        for stage, (filters, count) in enumerate(zip([64, 128, 256, 512], blocks), start=1):
            layer = []
            for index in range(count):
                block = _Block(kind, channels, filters, (1 if stage == 1 else 2) if index == 0 else 1)
                layer.append(block)
                channels = block.out_channels
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.num_features = channels

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return x.mean(dim=(2, 3))


def randomize_batch_norm(model, seed=0):
    """Random running statistics, so that swapping mean and variance cannot pass a test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
    return model


def save_timm_folder(model, folder):
    """What timm's save_for_hf writes: config.json (architecture, pretrained_cfg) + model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"architecture": model.architecture, "num_classes": 0, "num_features": model.num_features,
              "global_pool": "avg", "pretrained_cfg": IMAGENET_CFG}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({key: value.contiguous() for key, value in model.state_dict().items()},
              str(folder / "model.safetensors"))


class _ImageEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class _TextEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0, :]


class _ProjectionHead(nn.Module):
    def __init__(self, embedding_dim, projection_dim, dropout):
        super().__init__()
        self.projection = nn.Linear(embedding_dim, projection_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(projection_dim, projection_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(projection_dim)

    def forward(self, x):
        projected = self.projection(x)
        x = self.dropout(self.fc(self.gelu(projected)))
        x = x + projected
        return self.layer_norm(x)


class ClipLightningModel(nn.Module):
    """clip-lightning's CLIPDualEncoderModel, module for module (without Lightning itself)."""

    def __init__(self, image_model, text_model, image_dims, text_dims, projection_dims=256, dropout=0.0):
        super().__init__()
        self.image_encoder = _ImageEncoder(image_model)
        self.text_encoder = _TextEncoder(text_model)
        self.image_projection = _ProjectionHead(image_dims, projection_dims, dropout)
        self.text_projection = _ProjectionHead(text_dims, projection_dims, dropout)
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, inputs):
        image = self.image_projection(self.image_encoder(inputs["image"]))
        text = self.text_projection(self.text_encoder(inputs["input_ids"], inputs["attention_mask"]))
        return image, text


def import_transformers():
    """transformers, usable even where torchvision is installed but cannot load.

    A torchvision wheel built for CUDA beside a CPU torch raises RuntimeError on import, and
    transformers imports it whenever it is installed; the text models need none of it.
    """
    import sys

    try:
        import torchvision  # noqa: F401
    except Exception:  # RuntimeError: operator torchvision::nms does not exist
        for name in [name for name in sys.modules if name.startswith("torchvision")]:
            del sys.modules[name]
        import transformers.utils
        import transformers.utils.import_utils as import_utils

        import_utils.is_torchvision_available = lambda: False
        transformers.utils.is_torchvision_available = import_utils.is_torchvision_available
    import transformers

    return transformers


WORDS = ["a", "red", "circle", "blue", "square", "dog", "runs", "on", "the", "beach", "##s", "cafe"]


def write_hf_distilbert(folder, seed=0, dropout=0.0, initializer_range=0.02):
    """A random-init DistilBertModel and its tokenizer, saved as save_pretrained does."""
    transformers = import_transformers()
    torch.manual_seed(seed)
    vocab = folder / "vocab.txt"
    folder.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.DistilBertTokenizer(vocab=str(vocab), do_lower_case=True)
    config = transformers.DistilBertConfig(
        vocab_size=len(WORDS) + 5, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
        max_position_embeddings=64, dropout=dropout, attention_dropout=dropout,
        initializer_range=initializer_range,
    )
    model = transformers.DistilBertModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer
