"""A distillation teacher that labels each training view as the student sees it.

Soft labels computed once on the full frame (`train.teacher_probabilities`) describe a view the
student never trains on: it sees crops of 25-100% of the frame, rotated, flipped and recoloured,
and a 25% crop of a melanoma's border may well look benign. Consistent distillation (Beyer et al.,
"Knowledge distillation: A good teacher is patient and consistent", CVPR 2022) has the teacher
label the very view the student gets. Here each of the teacher's encoders (an ensemble's main
model and its members) sees that view drawn at its own input size from the same random draws
(crop, rotation, flips, colours, blur), so no encoder gets an upsampled copy of a smaller view,
and runs in ONNX Runtime, about three times faster than torch eager on a CPU.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from skin_model.data.transforms import augment_batch
from skin_model.model.network import SkinLesionNet
from skin_model.model.serving import onnx_bytes


class _PartLogits(nn.Module):
    """One encoder and its photo head: normalised photos -> raw photo logits."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels))


class ViewTeacher:
    """A trained model (or ensemble) exported part by part, which gives the probabilities of the
    views `augment_batch` draws: the mean of its parts' raw photo logits, softened by a softmax,
    as the full-frame soft labels are."""

    def __init__(self, model: SkinLesionNet) -> None:
        parts = [(model.encoder, model.photo_head, model.data_config),
                 *((m.encoder, m.photo_head, m.data_config) for m in model.members)]
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the threads torch trains with
        self.sizes: list[tuple[int, int]] = []
        # members see the main input, so every part takes the main model's colour normalisation
        self.colour_constancy = model.data_config.colour_constancy
        self.sessions: list[ort.InferenceSession] = []
        for encoder, head, config in parts:
            part = _PartLogits(copy.deepcopy(encoder), copy.deepcopy(head)).float().cpu().eval()
            height, width = config.input_size
            graph = onnx_bytes(part, (torch.zeros(2, 3, height, width),), ("pixels",), ("logits",),
                               {"pixels": {0: "photos"}, "logits": {0: "photos"}})
            self.sessions.append(ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]))
            self.sizes.append((height, width))

    def describe(self) -> dict[str, Any]:
        """What the card records of how the soft labels were made."""
        return {"same_view": True, "input_sizes": [list(size) for size in self.sizes]}

    def probabilities(self, photos: torch.Tensor, generator_state: torch.Tensor) -> torch.Tensor:
        """uint8 photos (N, 3, H, W) and the state of the generator the student's view is about to be
        drawn with -> the teacher's probabilities (N, 7) for that view, drawn again at each part's size."""
        logits = []
        for session, size in zip(self.sessions, self.sizes):
            generator = torch.Generator(device=photos.device)
            generator.set_state(generator_state)
            with torch.no_grad():
                view = augment_batch(photos, size, generator, colour_constancy=self.colour_constancy)
            view = view.float().cpu().numpy()
            logits.append(session.run(None, {"pixels": view})[0])
        return torch.as_tensor(np.mean(logits, axis=0), device=photos.device).softmax(-1)
