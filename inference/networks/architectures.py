"""The architecture registry: one place that turns (architecture, encoder) into an ``nn.Module``.

Every network is built with random initial weights (``encoder_weights=None``): nothing is downloaded.
The three product architectures take any segmentation-models-pytorch encoder; ResNet-50 is the reference
configuration, the shipped CPU demo models use MobileNetV2. The seed app's three checkpoint layouts are
registered too (``inference.networks.seed_models``), so their ``.pth`` files load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import segmentation_models_pytorch as smp
from torch import nn

from inference.classes import NUM_CLASSES
from inference.networks.dense_decoder import DeepLabV3PlusDense

DEFAULT_ENCODER = "resnet50"  # the reference configuration of the product architectures


@dataclass(frozen=True)
class Architecture:
    """A registered network family."""

    name: str
    description: str
    build: Callable[[str, int], nn.Module]  # (encoder name, number of classes) -> module
    takes_encoder: bool = True


def _deeplabv3plus(encoder: str, classes: int) -> nn.Module:
    return smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, classes=classes)


def _unetplusplus(encoder: str, classes: int) -> nn.Module:
    return smp.UnetPlusPlus(
        encoder_name=encoder, encoder_weights=None, classes=classes, decoder_channels=(128, 64, 32, 16, 16)
    )


def _dense(encoder: str, classes: int) -> nn.Module:
    return DeepLabV3PlusDense(encoder_name=encoder, classes=classes)


def _seed(name: str) -> Callable[[str, int], nn.Module]:
    def build(_encoder: str, _classes: int) -> nn.Module:
        from inference.networks import seed_models  # torchvision-heavy; imported on demand

        return seed_models.SEED_BUILDERS[name]()

    return build


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("deeplabv3plus", "DeepLabV3+ (segmentation-models-pytorch)", _deeplabv3plus),
        Architecture("unetplusplus", "U-Net++ (segmentation-models-pytorch)", _unetplusplus),
        Architecture("deeplabv3plus_dense", "DeepLabV3+ encoder and ASPP with a dense attention-gated decoder", _dense),
        Architecture(
            "seed_deeplabv3_resnet50",
            "Seed app: torchvision DeepLabV3-ResNet50",
            _seed("seed_deeplabv3_resnet50"),
            takes_encoder=False,
        ),
        Architecture("seed_unetpp", "Seed app: custom U-Net++ (base 32)", _seed("seed_unetpp"), takes_encoder=False),
        Architecture(
            "seed_dense_decoder",
            "Seed app: DeepLabV3+ with dense decoder (ResNet-50)",
            _seed("seed_dense_decoder"),
            takes_encoder=False,
        ),
    )
}


def build_model(architecture: str, encoder: str | None = None, classes: int = NUM_CLASSES) -> nn.Module:
    """Build ``architecture`` with ``encoder`` and ``classes`` outputs (random weights). Raises KeyError for
    unknown names."""
    try:
        arch = ARCHITECTURES[architecture]
    except KeyError:
        raise KeyError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}") from None
    return arch.build(encoder or DEFAULT_ENCODER, classes)
