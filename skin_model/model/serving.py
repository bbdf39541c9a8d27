"""What serving runs, as modules with array-in, array-out signatures, and their export to ONNX.

`PhotoGraph`: normalised photos and patient-context rows -> features, raw logits, the probabilities
a user is shown, and the two out-of-distribution distances. `HeatmapGraph`: the same plus what
Grad-CAM reads. `SequenceGraph`: one lesion's photos' features and raw logits, in time order -> the
sequence's raw logits and shown probabilities.

Both engines run these same modules: `engine.TorchEngine` in torch, `runtime.OnnxEngine` as
exported here. So the probability on screen is defined once, whichever engine computes it, and a
test holds the two to 1e-4 on real photos.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from skin_model import constants as C
from skin_model.trust.ood import mahalanobis

if TYPE_CHECKING:
    from skin_model.model.network import SkinLesionNet

PHOTO_INPUTS = ("pixels", "meta")
PHOTO_OUTPUTS = ("features", "logits", "shown", "feature_distance", "texture_distance")
HEATMAP_OUTPUTS = (*PHOTO_OUTPUTS, "cam_activations", "cam_gradients")
SEQUENCE_INPUTS = ("features", "logits")
SEQUENCE_OUTPUTS = ("sequence_logits", "sequence_shown")
OPSET = 17


class NotExportable(ValueError):
    """The network uses an operator the ONNX exporter cannot write (an ensemble member's antialiased
    resize, for one): such weights are served by the torch engine."""


class PhotoGraph(nn.Module):
    """Photos (N, 3, H, W) and context rows (N, META_DIM; zeros when unknown, which add exactly
    nothing) -> features (N, F), raw logits (N, 7), shown probabilities (N, 7), feature and texture
    distances (N,) to the real photos the out-of-distribution check was fitted on."""

    def __init__(self, model: SkinLesionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats, textures = self.model.features_and_texture(pixels)
        raw = self.model.photo_logits(feats, meta)
        shown = self.model.photo_probabilities(self.model.calibrated(raw, "photo"))
        ref = self.model.ood_reference()
        return (feats, raw, shown, mahalanobis(feats, ref.means, ref.precision),
                mahalanobis(textures, ref.texture_mean, ref.texture_precision))


class HeatmapGraph(PhotoGraph):
    """`PhotoGraph` plus what Grad-CAM reads, from the same forward: the CAM layer's output (N, C, h, w)
    and the gradient of every class's calibrated logit with respect to it (N, 7, C, h, w), in closed
    form (`SkinLesionNet.cam_gradients`). A separate graph, because ONNX Runtime computes every output
    of a graph on every run and folders need no heatmaps."""

    def forward(self, pixels: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grabbed: list[torch.Tensor] = []
        handle = self.model.cam_layer.register_forward_hook(lambda module, args, out: grabbed.append(out))
        try:
            outputs = super().forward(pixels, meta)
        finally:
            handle.remove()
        return (*outputs, grabbed[-1], self.model.cam_gradients(grabbed[-1]))


class SequenceGraph(nn.Module):
    """One lesion's (T, F) features and (T, 7) raw photo logits, time order = row order -> the
    sequence's raw logits (7,) and the probabilities a user is shown for it (7,)."""

    def __init__(self, model: SkinLesionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.model.sequence_logits(features[None], logits[None])[0]
        return raw, self.model.calibrated(raw, "sequence").softmax(-1)


def onnx_bytes(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...],
               outputs: tuple[str, ...], dynamic: dict[str, dict[int, str]]) -> bytes:
    """`module` traced on `inputs` as ONNX bytes (`dynamic`: the axes that may change size)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: it traces the forward hooks the texture statistics and Grad-CAM use
        # (its graphs agree with torch to 1e-5 on ONNX Runtime); it warns that a newer exporter exists.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, inputs, buffer, input_names=list(names), output_names=list(outputs),
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            raise NotExportable(f"these weights cannot be exported for ONNX Runtime: {exc}") from None
    return buffer.getvalue()


def graphs(model: SkinLesionNet) -> tuple[bytes, bytes, bytes | None]:
    """The photo, sequence and heatmap graphs of `model` as ONNX files' bytes (no heatmap graph when its
    gradients have no closed form); `checkpoint.save` writes them next to the weights with their checksums.
    Each graph is exported from its own copy of the model: exporting one graph changed the copy it traced
    (the next graph's features then differed by 0.2), and the caller's model is never touched."""
    def copy_of() -> SkinLesionNet:
        return copy.deepcopy(model).float().cpu().eval()

    height, width = model.data_config.input_size
    pixels, meta = torch.zeros(2, 3, height, width), torch.zeros(2, C.META_DIM)
    photo = onnx_bytes(PhotoGraph(copy_of()), (pixels, meta), PHOTO_INPUTS, PHOTO_OUTPUTS,
                       {name: {0: "photos"} for name in (*PHOTO_INPUTS, *PHOTO_OUTPUTS)})
    served = copy_of()
    with torch.no_grad():
        feats, raw = PhotoGraph(served)(torch.zeros(3, 3, height, width), torch.zeros(3, C.META_DIM))[:2]
    sequence = onnx_bytes(SequenceGraph(served), (feats, raw), SEQUENCE_INPUTS, SEQUENCE_OUTPUTS,
                          {name: {0: "photos"} for name in SEQUENCE_INPUTS})
    heatmap = onnx_bytes(HeatmapGraph(copy_of()), (pixels, meta), PHOTO_INPUTS, HEATMAP_OUTPUTS,
                         {name: {0: "photos"} for name in (*PHOTO_INPUTS, *HEATMAP_OUTPUTS)}
                         ) if model.closed_form_heatmaps else None
    return photo, sequence, heatmap
