"""Tiny plain-PyTorch architectures used by the test-suite and benchmarks.

Every entry of :data:`NETS` builds a fresh, deterministically initialised model in
``eval()`` mode together with a deterministic example input (batch size 2). Weights
are rescaled so that activations stay O(1), norm layers get non-trivial affine
parameters, and BatchNorm running statistics are calibrated on random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NETS", "ZooEntry", "calibrate_batchnorm"]


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: how to build it, how to feed it, and what it is."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], Any]
    family: str
    note: str = ""


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual MLP block: ``x + fc2(act(fc1(norm(x))))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class MLPSkip(nn.Module):
    """MLP with a stack of residual blocks between an input projection and a head."""

    def __init__(
        self,
        in_dim: int = 16,
        dim: int = 32,
        hidden: int = 64,
        depth: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.fc_in = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(ResidualMLPBlock(dim, hidden) for _ in range(depth))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc_in(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = False
) -> nn.Sequential:
    """conv (same padding, no bias) + BatchNorm, optionally + ReLU6 (MobileNetV2 style)."""
    layers = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block; one ``relu`` module is deliberately applied twice."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = (
            _conv_bn(in_ch, out_ch, 1, stride) if stride != 1 or in_ch != out_ch else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 reduce, 3x3 (strided), 1x1 expand by ``expansion``."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            _conv_bn(in_ch, out_ch, 1, stride) if stride != 1 or in_ch != out_ch else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    """CIFAR-sized ResNet: conv3x3 stem (8 ch), two stages of two blocks, avg-pool + linear head."""

    def __init__(
        self, block: type[BasicBlock | Bottleneck], widths: tuple[int, int], num_classes: int = 10
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        (w1, w2), (out1, out2) = widths, (w * block.expansion for w in widths)
        self.layer1 = nn.Sequential(block(8, w1), block(out1, w1))
        self.layer2 = nn.Sequential(block(out1, w2, stride=2), block(out2, w2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ConvBNReLU(nn.Module):
    """conv3x3 + BatchNorm + ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    """VGG-style net: ``features`` of ConvBNReLU/max-pool, flatten + MLP classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU(3, 8),
            ConvBNReLU(8, 8),
            nn.MaxPool2d(2),
            ConvBNReLU(8, 16),
            ConvBNReLU(16, 16),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 8 * 8, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-conv1x1-BN-ReLU-conv3x3 producing ``growth`` channels."""

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        mid = bn_size * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.Module):
    """Dense block: each layer's output is concatenated onto the running feature map."""

    def __init__(self, in_ch: int, num_layers: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_ch + i * growth, growth) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            new = layer(x)
            x = torch.cat([x, new], 1)
        return x


class Transition(nn.Sequential):
    """DenseNet transition: BN-ReLU-conv1x1 (compress) then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        super().__init__(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), conv, nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """Two dense blocks of three layers (growth 4) joined by a transition."""

    def __init__(
        self, stem: int = 8, growth: int = 4, num_layers: int = 3, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.block1 = DenseBlock(stem, num_layers, growth)
        ch = stem + num_layers * growth
        self.transition = Transition(ch, ch // 2)
        ch //= 2
        self.block2 = DenseBlock(ch, num_layers, growth)
        ch += num_layers * growth
        self.norm = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.transition(self.block1(self.conv0(x))))
        x = self.pool(self.relu(self.norm(x)))
        return self.classifier(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, linear project 1x1 (+ skip)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn(in_ch, hidden, 1, act=True))
        layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=True))
        layers.append(_conv_bn(hidden, out_ch, 1))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """Tiny MobileNetV2: stem, five inverted-residual blocks, 1x1 head conv, classifier."""

    # (out_ch, stride, expand_ratio)
    SETTINGS = ((8, 1, 1), (12, 2, 4), (12, 1, 4), (16, 2, 4), (16, 1, 4))

    def __init__(self, stem: int = 8, last: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, stem, 3, act=True)]
        in_ch = stem
        for out_ch, stride, t in self.SETTINGS:
            layers.append(InvertedResidual(in_ch, out_ch, stride, t))
            in_ch = out_ch
        layers.append(_conv_bn(in_ch, last, 1, act=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class LSTMClassifier(nn.Module):
    """Embedding, residual single-layer LSTMs, mean pooling over time, linear head."""

    def __init__(
        self, vocab: int = 100, dim: int = 16, depth: int = 2, num_classes: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstms = nn.ModuleList(nn.LSTM(dim, dim, batch_first=True) for _ in range(depth))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for lstm in self.lstms:
            x = x + lstm(x)[0]
        return self.head(x.mean(dim=1))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """Transformer feed-forward: fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block with residual attention and MLP branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class ViT(nn.Module):
    """ViT for 32x32 images: conv patch embedding, cls token, learned positions, pre-norm blocks."""

    def __init__(
        self,
        patch: int = 8,
        dim: int = 32,
        depth: int = 3,
        num_heads: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, (32 // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(ViTBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def _init_weights(module: nn.Module) -> None:
    """Variance-preserving init; random (non-identity) affine parameters on norm layers."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.in_features**-0.5)
    elif isinstance(module, nn.LSTM):
        for pname, param in module.named_parameters():
            if pname.startswith("weight"):
                nn.init.normal_(param, std=param.shape[1] ** -0.5)
    elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
        nn.init.uniform_(module.weight, 0.5, 1.5)
        nn.init.normal_(module.bias, std=0.1)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, input_shape: tuple[int, ...], steps: int = 4) -> None:
    """Fill BatchNorm running stats with the exact average over a few random batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(8, *input_shape, generator=gen))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def _build(
    factory: Callable[[], nn.Module], input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Seeded construction, init, BatchNorm calibration (for float inputs), eval mode."""
    torch.manual_seed(0)
    model = factory()
    model.apply(_init_weights)
    if input_shape is not None:
        calibrate_batchnorm(model, input_shape)
    return model.eval()


def _randn(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _tokens(vocab: int, *shape: int) -> Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))


_IMAGE = (3, 32, 32)


def _vision(name: str, factory: Callable[[], nn.Module], note: str) -> ZooEntry:
    """Entry for a 3x32x32 image classifier (BatchNorm calibrated on random images)."""
    return ZooEntry(
        name, partial(_build, factory, _IMAGE), partial(_randn, 2, *_IMAGE), "vision", note
    )


_ENTRIES = (
    ZooEntry(
        "mlp_skip",
        partial(_build, MLPSkip),
        partial(_randn, 2, 16),
        "vision",
        "MLP 16->32->10, 3 pre-norm residual blocks (hidden 64): 3 residual branches, hidden units",
    ),
    _vision(
        "resnet_basic",
        partial(ResNet, BasicBlock, (8, 16)),
        "ResNet, 2 stages x 2 BasicBlocks (8, 16 ch), shared in-place ReLU: 3 residual branches "
        "(the stride-2 block has a conv shortcut)",
    ),
    _vision(
        "resnet_bottleneck",
        partial(ResNet, Bottleneck, (4, 8)),
        "ResNet, 2 stages x 2 Bottlenecks (4->16, 8->32 ch): 2 residual branches (2 blocks have projection shortcuts)",
    ),
    _vision(
        "vgg_bn", VGG, "VGG 8,8,M,16,16,M + flatten MLP: 4 ConvBNReLU layers, channels, no skips"
    ),
    _vision(
        "densenet",
        DenseNet,
        "DenseNet-BC, 2 dense blocks x 3 layers (growth 4) + transition: concat channels, bottleneck width",
    ),
    _vision(
        "mobilenetv2",
        MobileNetV2,
        "MobileNetV2, 5 inverted residuals (3 with skip): 3 residual branches, depthwise hidden channels",
    ),
    ZooEntry(
        "lstm_classifier",
        partial(_build, LSTMClassifier),
        partial(_tokens, 100, 2, 12),
        "text",
        "Embedding(100,16), 2 residual LSTM(16) layers, mean-pool head: 2 residual branches, hidden units",
    ),
    _vision(
        "vit",
        ViT,
        "ViT 32x32/8, dim 32, 3 pre-norm blocks, 4 heads: 6 residual branches (attn, mlp)",
    ),
)

NETS: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
