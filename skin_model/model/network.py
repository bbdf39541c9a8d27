"""The network: an ImageNet-pretrained EfficientNet-Lite encodes each photo, an
LSTM reads the time-ordered photos of one lesion, and two heads give per-photo
and per-sequence logits over the seven classes.

The sequence logits are the log of the photos' pooled probabilities (as shown for each photo)
(a mean weighted towards the most confident photos, the weighting fitted on
validation) plus an LSTM correction (initialised at zero), so one photo and a
sequence share one set of weights and a sequence starts from the photos' consensus.
"""

from __future__ import annotations

import torch
from torch import nn

from skin_model.constants import BACKBONE, CLASSES, IMAGE_SIZE, META_DIM
from skin_model.data.config import DataConfig
from skin_model.model.backbones import (
    FEATURE_DIM,
    build_encoder,
    cam_layer,
    ood_layer,
    out_channels,
    pooled_gradient,
    split_forward,
)
from skin_model.trust.calibration import confidence_grid, remap_confidence
from skin_model.trust.ood import Reference, texture

__all__ = ["FEATURE_DIM", "Member", "SkinLesionNet"]


class Member(nn.Module):
    """A further trained encoder and photo head whose photo logits are averaged with the
    main ones (an ensemble); it sees the photos at its own input size and aspect (a member
    trained on 200x150 photos must not be shown them squashed into a square)."""

    def __init__(self, backbone: str, data_config: DataConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.backbone, self.data_config = backbone, data_config
        self.encoder = build_encoder(backbone, data_config.encoder_size, pretrained)
        self.photo_head = nn.Linear(FEATURE_DIM, len(CLASSES))

    @property
    def image_size(self) -> int:
        return self.data_config.image_size

    @property
    def input_height(self) -> int | None:
        return self.data_config.input_height

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.data_config.input_size:
            images = nn.functional.interpolate(images, size=self.data_config.input_size, mode="bilinear",
                                               antialias=True, align_corners=False)
        return self.encoder(images)


class SkinLesionNet(nn.Module):
    """CNN encoder + LSTM over photos of one lesion, with optional patient context.

    `members` (backbone, data config: input size and aspect) add further encoders and photo
    heads whose logits are averaged with the main ones (`skin-model combine` builds them from
    trained weights).
    Their features follow the main encoder's 1280 in `features()`; the LSTM, Grad-CAM and
    the out-of-distribution check use the main encoder's alone."""

    def __init__(self, backbone: str = BACKBONE, image_size: int = IMAGE_SIZE, pretrained: bool = True,
                 hidden: int = 256, dropout: float = 0.3, members: tuple[tuple[str, DataConfig], ...] = (),
                 data_config: DataConfig | None = None) -> None:
        super().__init__()
        n = len(CLASSES)
        self.backbone, self.image_size = backbone, image_size
        # How photos become this network's input (from the model card); `engine` builds inputs from it.
        self.data_config = data_config or DataConfig(image_size=image_size)
        if self.data_config.image_size != image_size:
            raise ValueError(f"data config for {self.data_config.image_size} px, network for {image_size} px")
        self.encoder = build_encoder(backbone, self.data_config.encoder_size, pretrained)
        self.members = nn.ModuleList(Member(b, config) for b, config in members)
        self.dropout = nn.Dropout(dropout)
        self.photo_head = nn.Linear(FEATURE_DIM, n)
        self.meta_head = nn.Sequential(nn.Linear(META_DIM, 64), nn.ReLU(), nn.Linear(64, n))
        self.project = nn.Sequential(nn.Linear(FEATURE_DIM + n, hidden), nn.ReLU())
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.sequence_head = nn.Linear(hidden, n)
        nn.init.zeros_(self.sequence_head.weight)
        nn.init.zeros_(self.sequence_head.bias)
        # Post-hoc calibration fitted on validation: logits / T + bias.
        self.register_buffer("photo_bias", torch.zeros(n))
        self.register_buffer("photo_temperature", torch.ones(()))
        # Top-label confidence map of the photo head, tabulated on calibration.confidence_grid (identity until fitted).
        self.register_buffer("photo_confidence", confidence_grid())
        self.register_buffer("sequence_bias", torch.zeros(n))
        self.register_buffer("sequence_temperature", torch.ones(()))
        # Weight of the LSTM's correction to the photos' pooled probabilities, chosen on validation.
        self.register_buffer("sequence_mix", torch.ones(()))
        # How strongly pooling favours the most confident photos (0: plain mean), chosen on validation.
        self.register_buffer("sequence_sharpness", torch.zeros(()))
        # Out-of-distribution statistics of the encoder's features (see ood.py).
        self.register_buffer("ood_means", torch.zeros(n, FEATURE_DIM))
        self.register_buffer("ood_precision", torch.eye(FEATURE_DIM))
        # ... and of the middle block's texture statistics (zeros until fitted; see ood.py). The block is looked
        # up once; a tuple keeps it out of the module tree (its weights are already there, under the encoder).
        self._ood_layer = (ood_layer(backbone, self.encoder),)
        width = 2 * out_channels(self.ood_layer)
        self.register_buffer("ood_texture_mean", torch.zeros(1, width))
        self.register_buffer("ood_texture_precision", torch.zeros(width, width))

    @property
    def cam_layer(self) -> nn.Module:
        """The CNN's last convolutional block, where Grad-CAM looks."""
        return cam_layer(self.backbone, self.encoder)

    @property
    def ood_layer(self) -> nn.Module:
        """The middle block, whose texture statistics the out-of-distribution check reads."""
        return self._ood_layer[0]

    @property
    def closed_form_heatmaps(self) -> bool:
        """True when `cam_gradients` can give Grad-CAM's gradients without autograd (one encoder whose
        backbone knows its head's gradient), so that heatmaps can be served from an exported graph."""
        return not self.members and pooled_gradient(self.backbone) is not None

    def cam_gradients(self, activations: torch.Tensor) -> torch.Tensor:
        """Gradients of every class's calibrated photo logit (what Grad-CAM explains) with respect to the CAM
        layer's output `activations` (N, C, h, w) -> (N, 7, C, h, w). Patient context adds a constant to
        the logits, so it changes no gradient."""
        gradient = pooled_gradient(self.backbone)
        if gradient is None or self.members:
            raise ValueError("these weights have no closed-form heatmap gradient; use the torch explainer")
        return gradient(self.encoder, activations, self.photo_head.weight / self.photo_temperature)

    def ood_reference(self) -> Reference:
        """The fitted statistics of real photos that the out-of-distribution check measures against."""
        return Reference(self.ood_means, self.ood_precision, self.ood_texture_mean, self.ood_texture_precision)

    def features_and_texture(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` and, from the same forward, the middle block's texture statistics (N, 2C)."""
        grabbed: list[torch.Tensor] = []
        handle = self.ood_layer.register_forward_hook(lambda module, args, out: grabbed.append(out))
        try:
            feats = self.features(images)
        finally:
            handle.remove()
        return feats, texture(grabbed[-1])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1280 * (1 + members)) pooled image features, the main encoder's first."""
        feats = self.encoder(images)
        if not self.members:
            return feats
        return torch.cat([feats, *(m.features(images).to(feats.dtype) for m in self.members)], dim=-1)

    def _split(self) -> tuple:
        if self.members:
            raise ValueError("an ensemble's encoders cannot share one cached prefix")
        return split_forward(self.backbone)

    def prefix(self, images: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """The main encoder's stem and first `n_blocks` blocks: what training may freeze and cache."""
        return self._split()[0](self.encoder, images, n_blocks)

    def features_from_prefix(self, prefix_out: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """The rest of the forward after `prefix`: `features_from_prefix(prefix(x, n), n)` is `features(x)`."""
        return self._split()[1](self.encoder, prefix_out, n_blocks)

    def photo_logits(self, feats: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Raw per-photo logits (the mean over the ensemble's members); patient context adds
        a correction that is zero when unknown."""
        logits = self.photo_head(self.dropout(feats[..., :FEATURE_DIM]))
        if self.members:
            parts = feats.split(FEATURE_DIM, dim=-1)
            logits = (logits + sum(m.photo_head(self.dropout(f)) for m, f in zip(self.members, parts[1:]))) / (
                1 + len(self.members))
        if meta is not None:
            logits = logits + self.meta_head(meta) - self.meta_head(torch.zeros_like(meta))
        return logits

    def pooled_log_probs(self, photo_logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Log of the mean of the photos' probabilities (as shown for each photo), each photo weighted by
        softmax(sharpness * its confidence): a sharp, clear photo outweighs blurred or
        ambiguous ones, and sharpness 0 is the plain mean. (B, T, 7) and a (B, T) mask -> (B, 7)."""
        probs = self.photo_probabilities(self.calibrated(photo_logits.float(), "photo"))
        score = (self.sequence_sharpness * probs.amax(-1)).masked_fill(~steps, float("-inf"))
        weights = score.softmax(-1).unsqueeze(-1)
        return (weights * probs).sum(1).clamp_min(1e-12).log()

    def sequence_logits(self, feats: torch.Tensor, photo_logits: torch.Tensor,
                        lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 1280) features and (B, T, 7) raw photo logits of time-ordered photos -> (B, 7)."""
        x = self.project(torch.cat([self.dropout(feats[..., :FEATURE_DIM]), photo_logits.detach()], dim=-1))
        if lengths is None:  # every photo counts: the LSTM reads them as they are (exportable to ONNX; packing is not)
            steps = torch.ones_like(photo_logits[..., 0], dtype=torch.bool)
            _, (h, _) = self.lstm(x)
        else:
            steps = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None].to(feats.device)
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h, _) = self.lstm(packed)
        return self.pooled_log_probs(photo_logits, steps) + self.sequence_mix * self.sequence_head(h[-1]).float()

    def calibrated(self, logits: torch.Tensor, kind: str) -> torch.Tensor:
        temperature = getattr(self, f"{kind}_temperature")
        return logits / temperature + getattr(self, f"{kind}_bias")

    def photo_probabilities(self, calibrated_logits: torch.Tensor) -> torch.Tensor:
        """What a user is shown for each photo: calibrated logits -> probabilities with the
        top class's confidence mapped to the accuracy observed on validation."""
        return remap_confidence(calibrated_logits, self.photo_confidence)

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated per-photo logits of (N, 3, H, W) photos; Grad-CAM calls this."""
        return self.calibrated(self.photo_logits(self.features(images), meta), "photo")

    def forward_sequence(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One lesion's time-ordered photos (T, 3, H, W) -> calibrated (T, 7) photo and (7,) sequence logits."""
        feats = self.features(images)
        photo = self.photo_logits(feats, meta)
        seq = self.sequence_logits(feats[None], photo[None])[0]
        return self.calibrated(photo, "photo"), self.calibrated(seq, "sequence")
