"""skin_model.training.teacher: a distillation teacher that labels the very view the student trains on."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import STUB_BACKBONE, build_tiny_model

from skin_model.constants import CLASSES
from skin_model.data.config import DataConfig
from skin_model.data.transforms import augment_batch
from skin_model.model.network import SkinLesionNet
from skin_model.training.config import TrainConfig
from skin_model.training.stages import new_optimizer, train_step
from skin_model.training.teacher import ViewTeacher


@pytest.fixture(scope="module")
def ensemble() -> SkinLesionNet:
    """A main model at 64 px with two members at their own sizes (48 px square and 80x60), all
    with the tiny model's trained BatchNorm statistics, so their outputs depend on the photo."""
    torch.manual_seed(1)
    model = SkinLesionNet(STUB_BACKBONE, 64, pretrained=False,
                          members=((STUB_BACKBONE, DataConfig(48)), (STUB_BACKBONE, DataConfig(80, input_height=60))))
    tiny = build_tiny_model()
    model.encoder.load_state_dict(tiny.encoder.state_dict())
    for seed, member in enumerate(model.members, start=2):
        member.encoder.load_state_dict(build_tiny_model(seed).encoder.state_dict())
    return model.eval()


def _view_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def test_labels_each_part_on_its_own_size_of_the_same_view(ensemble: SkinLesionNet) -> None:
    """The ONNX Runtime teacher gives the softmax of the mean of its parts' raw photo logits, each part
    shown the view drawn from the given generator state at its own input size; another state (another
    crop, rotation and colour) gives other probabilities."""
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (5, 3, 75, 100), dtype=torch.uint8)
    teacher = ViewTeacher(ensemble)
    assert teacher.sizes == [(64, 64), (48, 48), (60, 80)]
    assert teacher.describe() == {"same_view": True, "input_sizes": [[64, 64], [48, 48], [60, 80]]}
    got = teacher.probabilities(photos, _view_state(7))

    parts = [(ensemble.encoder, ensemble.photo_head), *((m.encoder, m.photo_head) for m in ensemble.members)]
    logits = []
    with torch.no_grad():
        for (encoder, head), size in zip(parts, teacher.sizes):
            generator = torch.Generator()
            generator.set_state(_view_state(7))
            logits.append(head(encoder(augment_batch(photos, size, generator))))
    expected = torch.stack(logits).mean(0).softmax(-1)
    assert got.shape == (5, len(CLASSES)) and torch.allclose(got, expected, atol=1e-4)
    other = teacher.probabilities(photos, _view_state(8))
    assert (other - got).abs().max() > 1e-3


class _Recording:
    """Stands in for a ViewTeacher: remembers what it was asked to label, answers fixed probabilities."""

    def __init__(self, answer: torch.Tensor) -> None:
        self.answer, self.asked = answer, []

    def probabilities(self, photos: torch.Tensor, generator_state: torch.Tensor) -> torch.Tensor:
        self.asked.append((photos, generator_state.clone()))
        return self.answer


def test_train_step_asks_the_teacher_for_the_students_view(tiny_model: SkinLesionNet) -> None:
    """The state a step hands its teacher regenerates exactly the view the student's encoder received,
    and the loss is the one those probabilities give as fixed soft labels."""
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    y = torch.tensor([0, 1, 4, 5])
    cfg = TrainConfig(label_smoothing=0.0, distil_weight=1.0, lr=0.0, freeze_blocks=0)
    answer = torch.softmax(torch.randn(4, len(CLASSES)), -1)
    recorder = _Recording(answer)
    losses, seen = [], []
    for teacher, soft in ((recorder, None), (None, answer)):
        model = copy.deepcopy(tiny_model).eval()  # eval: no dropout, so the two forwards match
        handle = model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
        _, opt = new_optimizer(model, cfg)
        losses.append(train_step(model, opt, torch.nn.CrossEntropyLoss(), photos, y, cfg,
                                 torch.Generator().manual_seed(3), torch.device("cpu"), soft=soft, teacher=teacher))
        handle.remove()
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.equal(seen[0], seen[1])  # the teacher does not move the student's random stream
    (asked_photos, state), = recorder.asked
    assert torch.equal(asked_photos, photos)
    generator = torch.Generator()
    generator.set_state(state)
    assert torch.equal(augment_batch(photos, tiny_model.data_config.input_size, generator), seen[0])
