"""The yardstick: the same dual encoder in plain PyTorch (torch.nn only), one training step.

    python benchmarks/reference_torch.py --size full --precision bf16 --batch-size 32

ResNet (torchvision's layout) + a DistilBERT-shaped post-norm transformer, projection heads
as in kclip, CLIP loss, Adam with three parameter groups (image 1e-4, text 1e-5, heads 1e-3),
bf16/fp16 through autocast, the way a PyTorch Lightning project trains. Not product code.

It is the strongest plain PyTorch a careful user writes, so the ratios don't flatter kclip:
the image tower and its inputs in `channels_last` memory format (oneDNN's and cuDNN's
preferred convolution layout; `--no-channels-last` turns it off), torch's fused Adam
(one kernel for all parameters) where this torch supports it on the device, and, since
2026-12-06, ReLUs and residual sums in place as torchvision's and timm's ResNets write them
(`--no-inplace` gives the out-of-place reference that the ratios before that date were
measured against).

`--keep-freed-memory` gives it kclip's glibc malloc settings (kclip/backends/torch/heap.py):
not something plain PyTorch code does, but an environment a user can set up (PyTorch's CPU
tuning guide suggests swapping the allocator), so compare_training.py can also report the
ratio with both sides on the same allocator settings.
"""

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from harness import SIZES, report, time_steps  # noqa: E402


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, filters, stride, inplace=True):
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(in_channels, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters)
        self.shortcut = None
        if stride != 1 or in_channels != filters:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, filters, 1, stride, bias=False), nn.BatchNorm2d(filters))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=self.inplace)
        out = self.bn2(self.conv2(out))
        return F.relu(residual_sum(out, x if self.shortcut is None else self.shortcut(x), self.inplace),
                      inplace=self.inplace)


def residual_sum(residual, shortcut, inplace):
    # torchvision's `out += identity`: the sum goes into the residual branch's batch-norm output.
    return residual.add_(shortcut) if inplace else residual + shortcut


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, filters, stride, inplace=True):
        super().__init__()
        self.inplace = inplace
        out_channels = filters * 4
        self.conv1 = nn.Conv2d(in_channels, filters, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters)
        self.conv3 = nn.Conv2d(filters, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=self.inplace)
        out = F.relu(self.bn2(self.conv2(out)), inplace=self.inplace)
        out = self.bn3(self.conv3(out))
        return F.relu(residual_sum(out, x if self.shortcut is None else self.shortcut(x), self.inplace),
                      inplace=self.inplace)


class ResNet(nn.Module):
    def __init__(self, stackwise_num_filters, stackwise_num_blocks, stackwise_num_strides, block_type, inplace=True,
                 **_):
        super().__init__()
        block = Bottleneck if block_type == "bottleneck_block" else BasicBlock
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=inplace), nn.MaxPool2d(3, 2, 1)
        )
        layers, channels = [], 64
        for filters, blocks, stride in zip(stackwise_num_filters, stackwise_num_blocks, stackwise_num_strides):
            for index in range(blocks):
                layers.append(block(channels, filters, stride if index == 0 else 1, inplace))
                channels = filters * block.expansion
        self.stages = nn.Sequential(*layers)
        self.output_dim = channels

    def forward(self, images):
        return self.stages(self.stem(images)).mean(dim=(2, 3))


class TextEncoder(nn.Module):
    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim, max_sequence_length):
        super().__init__()
        self.token_embedding = nn.Embedding(vocabulary_size, hidden_dim)
        self.position_embedding = nn.Embedding(max_sequence_length, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        layer = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, intermediate_dim, dropout=0.1, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.output_dim = hidden_dim

    def forward(self, token_ids, padding_mask):
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.norm(self.token_embedding(token_ids) + self.position_embedding(positions))
        return self.encoder(x, src_key_padding_mask=~padding_mask)[:, 0]


class ProjectionHead(nn.Module):
    def __init__(self, input_dim, projection_dim, dropout=0.1):
        super().__init__()
        self.projection = nn.Linear(input_dim, projection_dim)
        self.fully_connected = nn.Linear(projection_dim, projection_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(projection_dim)

    def forward(self, x):
        projected = self.projection(x)
        x = self.dropout(self.fully_connected(F.gelu(projected)))
        return self.norm(x + projected)


class DualEncoder(nn.Module):
    def __init__(self, size, inplace=True):
        super().__init__()
        self.image_encoder = ResNet(**size["resnet"], inplace=inplace)
        self.text_encoder = TextEncoder(**size["bert"])
        self.image_head = ProjectionHead(self.image_encoder.output_dim, size["projection_dim"])
        self.text_head = ProjectionHead(self.text_encoder.output_dim, size["projection_dim"])
        self.log_logit_scale = nn.Parameter(torch.tensor(2.6593))

    def forward(self, images, token_ids, padding_mask):
        image = F.normalize(self.image_head(self.image_encoder(images)).float(), dim=-1)
        text = F.normalize(self.text_head(self.text_encoder(token_ids, padding_mask)).float(), dim=-1)
        logits = self.log_logit_scale.exp().clamp(max=100) * text @ image.T
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def reference_step(size_name, batch, precision="fp32", channels_last=True, fused_adam=True, inplace=True):
    """(step(), model, optimizer, device, fused): one training step of the reference at `size_name`, on fixed host tensors."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = SIZES[size_name]
    model = DualEncoder(size, inplace).to(device).train()
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    groups = [
        {"params": list(model.image_encoder.parameters()), "lr": 1e-4},
        {"params": list(model.text_encoder.parameters()), "lr": 1e-5},
        {"params": [*model.image_head.parameters(), *model.text_head.parameters(), model.log_logit_scale], "lr": 1e-3},
    ]
    fused = False
    if fused_adam:
        try:  # CPU support arrived in torch 2.4; older builds raise here.
            optimizer, fused = torch.optim.Adam(groups, fused=True), True
        except (RuntimeError, TypeError, ValueError):
            pass
    if not fused:
        optimizer = torch.optim.Adam(groups)
    image_size, length = size["image_size"], size["sequence_length"]
    images = torch.randn(batch, 3, image_size, image_size)
    token_ids = torch.randint(5, size["bert"]["vocabulary_size"], (batch, length))
    padding_mask = torch.ones(batch, length, dtype=torch.bool)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def step():
        # Host tensors each step, as a data loader would hand them over.
        inputs = [tensor.to(device, non_blocking=True) for tensor in (images, token_ids, padding_mask)]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(*inputs)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, model, optimizer, device, fused


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.channels_last memory format for the image tower (default on)")
    parser.add_argument("--fused-adam", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.optim.Adam(fused=True) where supported (default on)")
    parser.add_argument("--inplace", action=argparse.BooleanOptionalAction, default=True,
                        help="ReLUs and residual sums in place, as torchvision and timm write them (default on)")
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=False,
                        help="kclip's glibc malloc settings: no mmap, no trimming (default off)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.keep_freed_memory:
        # Loaded by path: importing the kclip package would pull Keras and TensorFlow into the
        # reference's process and its peak RSS.
        heap_path = Path(__file__).resolve().parents[1] / "kclip" / "backends" / "torch" / "heap.py"
        spec = importlib.util.spec_from_file_location("kclip_heap", heap_path)
        heap = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(heap)
        heap.keep_freed_memory()

    step, model, _, device, fused = reference_step(args.size, args.batch_size, args.precision, args.channels_last,
                                                   args.fused_adam, args.inplace)
    size = SIZES[args.size]
    batch, image_size, length = args.batch_size, size["image_size"], size["sequence_length"]
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    faults = []
    times = time_steps(step, args.warmup, args.steps, synchronize, faults)
    report(
        "torch_reference_step",
        times,
        batch,
        size=args.size,
        image_size=image_size,
        sequence_length=length,
        precision=args.precision,
        channels_last=args.channels_last,
        fused_adam=fused,
        inplace=args.inplace,
        keep_freed_memory=args.keep_freed_memory,
        minor_faults_per_step=statistics.median(faults),
        parameters=sum(p.numel() for p in model.parameters()),
        torch=torch.__version__,
        device=device,
    )


if __name__ == "__main__":
    main()
