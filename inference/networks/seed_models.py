"""The seed app's three checkpoint architectures, rebuilt so that its ``.pth`` files load with ``strict=True``.

The seed app shipped three trained networks as bare state_dicts. Their exact key lists and shapes are recorded
in the manifests of ``shared/seed-checkpoints/``; the modules here reproduce those layouts key for key and in
the same order:

- ``seed_deeplabv3_resnet50``: torchvision's DeepLabV3-ResNet50 (output stride 8, ASPP rates 12/24/36) with a
  three-class head and no auxiliary head, held in a wrapper attribute ``model`` (so every key starts
  ``model.``). Trained at 512x256 (H x W).
- ``seed_unetpp``: a hand-written U-Net++ with widths 32/64/128/256/512, fifteen nodes ``conv{i}_{j}`` and a
  1x1 head ``final``. Trained at 256x256.
- ``seed_dense_decoder``: a hand-written DeepLabV3+ whose decoder is dense (every stage also sees upsampled
  copies of all coarser stages) with additive attention gates on the skips. Its ResNet-50 is registered twice,
  as ``backbone`` and as the aliases ``layer0``..``layer4``, so the state_dict holds each backbone tensor
  under two keys. Trained at 256x256.

All three expect a grey image copied to three channels and scaled to [0, 1] (divided by 255), with no mean/std
normalisation, and produce logits for F=0, V=1, T1=2.

Everything is built with random weights; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from inference.classes import NUM_CLASSES


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False) to ``size``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------------------
# 1. torchvision DeepLabV3-ResNet50 in a wrapper


class SeedDeepLabV3ResNet50(nn.Module):
    """torchvision DeepLabV3-ResNet50 with a 3-class ``DeepLabHead`` and no auxiliary head, under ``model``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        # Built with torchvision's 21-class head (as the seed did), which is then swapped for a 3-class one.
        self.model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
        self.model.classifier = DeepLabHead(2048, num_classes)
        self.model.aux_classifier = None

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


# --------------------------------------------------------------------------------------------------------------
# 2. Custom U-Net++


class ConvBlock(nn.Module):
    """Two rounds of 3x3 convolution (no bias), batch norm and ReLU, held as ``conv``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SeedUNetPP(nn.Module):
    """The seed's U-Net++: a triangular grid of nodes X(i, j), i the level (0 finest), j the column.

    Column 0 is a plain encoder (max-pool between levels). Node X(i, j) with j > 0 takes the concatenation of
    every earlier node on its own level, X(i, 0..j-1), followed by X(i+1, j-1) upsampled (bilinear, x2) to
    level i. There is no deep supervision: the head ``final`` (1x1 convolution) reads X(0, 4) only.
    Input H and W should be multiples of 16.
    """

    DEPTH = 5

    def __init__(self, in_channels: int = 3, num_classes: int = NUM_CLASSES, base_channels: int = 32) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(self.DEPTH)]
        self.widths = widths
        # Registration order matches the checkpoint: column by column, each column from level 0 downwards.
        for j in range(self.DEPTH):
            for i in range(self.DEPTH - j):
                if j == 0:  # noqa: SIM108 - a nested conditional expression would hide the two cases
                    cin = in_channels if i == 0 else widths[i - 1]
                else:
                    cin = widths[i] * j + widths[i + 1]
                self.add_module(f"conv{i}_{j}", ConvBlock(cin, widths[i]))
        self.pool = nn.MaxPool2d(2)
        self.final = nn.Conv2d(widths[0], num_classes, 1)

    def node(self, i: int, j: int) -> ConvBlock:
        return cast(ConvBlock, self.get_submodule(f"conv{i}_{j}"))

    def forward(self, x: Tensor) -> Tensor:
        grid: dict[tuple[int, int], Tensor] = {}
        for i in range(self.DEPTH):  # encoder column
            grid[i, 0] = self.node(i, 0)(x if i == 0 else self.pool(grid[i - 1, 0]))
        for j in range(1, self.DEPTH):
            for i in range(self.DEPTH - j):
                same_level = [grid[i, k] for k in range(j)]
                below = _resize(grid[i + 1, j - 1], grid[i, 0].shape[-2:])
                grid[i, j] = self.node(i, j)(torch.cat([*same_level, below], dim=1))
        return self.final(grid[0, self.DEPTH - 1])


# --------------------------------------------------------------------------------------------------------------
# 3. Custom DeepLabV3+ with a dense, attention-gated decoder


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel // 2)
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SeedASPP(nn.Module):
    """Atrous spatial pyramid pooling with named branches.

    ``conv1`` (1x1) and ``conv2``..``conv4`` (3x3 at the given dilation rates) are conv-BN-ReLU;
    ``image_pool`` is global average pooling then conv-BN-ReLU, broadcast back to the feature size;
    ``project`` fuses the five 256-channel branches (1x1 conv-BN-ReLU, then dropout 0.5).
    """

    def __init__(self, in_channels: int = 2048, channels: int = 256, rates: tuple[int, int, int] = (6, 12, 18)) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn_relu(in_channels, channels, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(in_channels, channels, 3, rates[0]))
        self.conv3 = nn.Sequential(*_conv_bn_relu(in_channels, channels, 3, rates[1]))
        self.conv4 = nn.Sequential(*_conv_bn_relu(in_channels, channels, 3, rates[2]))
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, channels, 1))
        self.project = nn.Sequential(*_conv_bn_relu(5 * channels, channels, 1), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        pooled = _resize(self.image_pool(x), x.shape[-2:])
        branches = [self.conv1(x), self.conv2(x), self.conv3(x), self.conv4(x), pooled]
        return self.project(torch.cat(branches, dim=1))


class SeedAttentionGate(nn.Module):
    """Additive attention gate: ``skip * sigmoid(BN(conv(relu(Wg(g) + Wx(skip)))))``.

    ``Wg`` and ``Wx`` are 1x1 convolutions (with bias) plus batch norm into ``inter_channels``; ``psi`` maps that
    to a single-channel weight map. ``g`` and ``skip`` must share their spatial size.
    """

    def __init__(self, g_channels: int, x_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.Wg = nn.Sequential(nn.Conv2d(g_channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.Wx = nn.Sequential(nn.Conv2d(x_channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: Tensor, skip: Tensor) -> Tensor:
        return skip * self.psi(F.relu(self.Wg(g) + self.Wx(skip)))


class SeedDenseDecoderBlock(nn.Module):
    """One decoder stage that doubles the resolution.

    The incoming feature is upsampled to the stage's size (the skip's size, or twice its own without a skip);
    the skip, if any, passes an attention gate driven by that upsampled feature. The block then concatenates
    [upsampled input, gated skip, every earlier coarser stage upsampled to this size] and applies two rounds of
    3x3 conv (no bias), BN and ReLU (``conv``).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, prev_channels: int, out_channels: int, gate_channels: int | None
    ) -> None:
        super().__init__()
        self.att = (
            SeedAttentionGate(in_channels, skip_channels, gate_channels) if skip_channels and gate_channels else None
        )
        cin = in_channels + skip_channels + prev_channels
        self.conv = nn.Sequential(*_conv_bn_relu(cin, out_channels, 3), *_conv_bn_relu(out_channels, out_channels, 3))

    def forward(self, x: Tensor, skip: Tensor | None = None, previous: Sequence[Tensor] = ()) -> Tensor:
        size = skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = _resize(x, size)
        parts = [x]
        if skip is not None:
            parts.append(self.att(x, skip) if self.att is not None else skip)
        parts.extend(_resize(p, size) for p in previous)
        return self.conv(torch.cat(parts, dim=1))


class SeedDenseDecoder(nn.Module):
    """The seed's DeepLabV3+ with a dense decoder (ResNet-50, output stride 8).

    Encoder: torchvision ResNet-50 with layers 3 and 4 dilated instead of strided; for an H x W input the stem
    (``layer0``: conv1, bn1, relu) gives 64 channels at H/2, max pooling plus ``layer1`` 256 at H/4, and
    ``layer2``..``layer4`` 512/1024/2048 at H/8. The ResNet is kept whole as ``backbone`` (its unused ``fc``
    included) and its stem and stages are also registered as ``layer0``..``layer4``; both names refer to the
    same tensors.

    Decoder: ASPP (rates 6/12/18) on layer 4, then ``dec0_conv`` (3x3 conv-BN-ReLU) gives d0 (256 ch, H/8).
    ``dec1`` upsamples d0 to H/4 and fuses it with the gated 1x1 projection of layer 1 (``enc_64``) into d1
    (128 ch). ``dec2`` upsamples d1 to H/2 and fuses it with the gated projection of the stem (``enc_128``)
    and with d0 (x4) into d2 (64 ch). ``dec3`` upsamples d2 to H and fuses it with d1 (x4) and d0 (x8) into
    d3 (64 ch), read by the 1x1 ``classifier``. ``enc_32`` (a projection of layer 3) exists in the checkpoint
    but is not used. The output has the input's size when H and W are multiples of 8.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.backbone = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        self.layer0 = nn.Sequential(self.backbone.conv1, self.backbone.bn1, self.backbone.relu)
        self.layer1 = self.backbone.layer1
        self.layer2 = self.backbone.layer2
        self.layer3 = self.backbone.layer3
        self.layer4 = self.backbone.layer4
        self.aspp = SeedASPP(2048, 256, (6, 12, 18))
        self.enc_32 = nn.Conv2d(1024, 256, 1)  # present in the checkpoint, unused in forward
        self.enc_64 = nn.Conv2d(256, 128, 1)
        self.enc_128 = nn.Conv2d(64, 64, 1)
        self.dec0_conv = nn.Sequential(*_conv_bn_relu(256, 256, 3))
        self.dec1 = SeedDenseDecoderBlock(256, 128, 0, 128, gate_channels=128)
        self.dec2 = SeedDenseDecoderBlock(128, 64, 256, 64, gate_channels=64)
        self.dec3 = SeedDenseDecoderBlock(64, 0, 128 + 256, 64, gate_channels=None)
        self.classifier = nn.Conv2d(64, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        stem = self.layer0(x)  # H/2, 64
        f1 = self.layer1(self.backbone.maxpool(stem))  # H/4, 256
        f4 = self.layer4(self.layer3(self.layer2(f1)))  # H/8, 2048
        d0 = self.dec0_conv(self.aspp(f4))  # H/8, 256
        d1 = self.dec1(d0, self.enc_64(f1))  # H/4, 128
        d2 = self.dec2(d1, self.enc_128(stem), [d0])  # H/2, 64
        d3 = self.dec3(d2, None, [d1, d0])  # H, 64
        return self.classifier(d3)


# --------------------------------------------------------------------------------------------------------------
# Registry and identification

SEED_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "seed_deeplabv3_resnet50": SeedDeepLabV3ResNet50,
    "seed_unetpp": SeedUNetPP,
    "seed_dense_decoder": SeedDenseDecoder,
}

SEED_INPUT_SIZES: dict[str, tuple[int, int]] = {  # (H, W) the seed trained at
    "seed_deeplabv3_resnet50": (512, 256),
    "seed_unetpp": (256, 256),
    "seed_dense_decoder": (256, 256),
}


@cache
def _signature(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``name``'s state_dict, built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        module = SEED_BUILDERS[name]()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _few(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def identify_state_dict(state: Mapping[str, Tensor]) -> str:
    """Name the seed architecture whose state_dict has exactly ``state``'s keys and shapes.

    Raises ``ValueError`` naming the closest candidate and a few of its missing, unexpected or mis-shaped keys.
    """
    if not state:
        raise ValueError("empty state_dict: not a seed checkpoint")
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else None for k, v in state.items()}
    scored: list[tuple[int, str, list[str], list[str], list[str]]] = []
    for name in SEED_BUILDERS:
        expected = _signature(name)
        missing = [k for k in expected if k not in shapes]
        unexpected = [k for k in shapes if k not in expected]
        wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
        if not (missing or unexpected or wrong):
            return name
        scored.append((len(missing) + len(unexpected) + len(wrong), name, missing, unexpected, wrong))
    _, name, missing, unexpected, wrong = min(scored)
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys, e.g. {_few(missing)}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys, e.g. {_few(unexpected)}")
    if wrong:
        k = wrong[0]
        details.append(f"{len(wrong)} keys with other shapes, e.g. {k!r} {shapes[k]} instead of {_signature(name)[k]}")
    raise ValueError(
        f"state_dict ({len(state)} entries) matches none of the seed architectures ({', '.join(SEED_BUILDERS)}); "
        f"closest is {name!r}: " + "; ".join(details)
    )


__all__ = [
    "SEED_BUILDERS",
    "SEED_INPUT_SIZES",
    "ConvBlock",
    "SeedASPP",
    "SeedAttentionGate",
    "SeedDeepLabV3ResNet50",
    "SeedDenseDecoder",
    "SeedDenseDecoderBlock",
    "SeedUNetPP",
    "identify_state_dict",
]
