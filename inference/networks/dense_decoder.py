"""DeepLabV3+ with a dense, nested (U-Net++-style) decoder and attention-gated skip connections.

The encoder (any segmentation-models-pytorch encoder, dilated to output stride 16) and its ASPP are
DeepLabV3+'s. Instead of DeepLabV3+'s single stride-4 fusion, the decoder is a nested grid of nodes at
strides 8, 4 and 2: node ``(s, j)`` sees the skip feature of stride ``s`` (through an attention gate
driven by the coarser node), every earlier node of the same stride, and the upsampled node one level
coarser - the dense skip pathways of U-Net++ (Zhou et al., 2018) with the additive attention gates of
Attention U-Net (Oktay et al., 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class AttentionGate(nn.Module):
    """Additive attention: weight skip features ``x`` by a map computed from ``x`` and gating ``g``."""

    def __init__(self, g_channels: int, x_channels: int, inter: int) -> None:
        super().__init__()
        self.Wg = nn.Sequential(nn.Conv2d(g_channels, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.Wx = nn.Sequential(nn.Conv2d(x_channels, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.Wg(g) + self.Wx(x)))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3PlusDense(nn.Module):
    """DeepLabV3+ encoder + ASPP feeding a nested dense decoder with attention gates."""

    def __init__(
        self,
        encoder_name: str = "resnet50",
        classes: int = 3,
        aspp_channels: int = 128,
        decoder_channels: tuple[int, int, int] = (64, 32, 16),  # at strides 8, 4, 2
    ) -> None:
        super().__init__()
        self.encoder = get_encoder(encoder_name, in_channels=3, depth=5, weights=None, output_stride=16)
        ch = self.encoder.out_channels  # strides 1, 2, 4, 8, 16, 16
        self.aspp = nn.Sequential(
            ASPP(ch[-1], aspp_channels, (6, 12, 18), separable=True, dropout=0.1),
            _conv_bn_relu(aspp_channels, aspp_channels),
        )
        c8, c4, c2 = decoder_channels
        self.proj = nn.ModuleList(
            [_conv_bn_relu(ch[3], c8, 1), _conv_bn_relu(ch[2], c4, 1), _conv_bn_relu(ch[1], c2, 1)]
        )
        # Level stride 8: one node. Stride 4: two nodes. Stride 2: three nodes (the nested grid).
        self.gate8 = AttentionGate(aspp_channels, c8, c8)
        self.x8_1 = _conv_bn_relu(c8 + aspp_channels, c8)
        self.x4_1 = _conv_bn_relu(c4 + c8, c4)
        self.gate4 = AttentionGate(c8, c4, c4)
        self.x4_2 = _conv_bn_relu(c4 * 2 + c8, c4)
        self.x2_1 = _conv_bn_relu(c2 + c4, c2)
        self.x2_2 = _conv_bn_relu(c2 * 2 + c4, c2)
        self.gate2 = AttentionGate(c4, c2, c2)
        self.x2_3 = _conv_bn_relu(c2 * 3 + c4, c2)
        self.head = nn.Conv2d(c2, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        f = self.encoder(x)
        s8, s4, s2 = self.proj[0](f[3]), self.proj[1](f[2]), self.proj[2](f[1])
        d0 = self.aspp(f[-1])
        d0u = _up(d0, s8)
        x8_1 = self.x8_1(torch.cat([self.gate8(d0u, s8), d0u], 1))
        x4_1 = self.x4_1(torch.cat([s4, _up(s8, s4)], 1))
        x8_1u = _up(x8_1, s4)
        x4_2 = self.x4_2(torch.cat([self.gate4(x8_1u, s4), x4_1, x8_1u], 1))
        x2_1 = self.x2_1(torch.cat([s2, _up(s4, s2)], 1))
        x2_2 = self.x2_2(torch.cat([s2, x2_1, _up(x4_1, s2)], 1))
        x4_2u = _up(x4_2, s2)
        x2_3 = self.x2_3(torch.cat([self.gate2(x4_2u, s2), x2_1, x2_2, x4_2u], 1))
        return F.interpolate(self.head(x2_3), size=size, mode="bilinear", align_corners=False)
