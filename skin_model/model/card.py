"""The model card: a typed record that travels with the weights.

Everything needed to use the weights correctly comes from here: the data config from which
the transforms are built (input size, normalisation, interpolation), the trust settings (the
inconclusive threshold and the out-of-distribution thresholds), the classes, and the
provenance (data, split, training) and measured figures. `checkpoint.load` returns one and
`checkpoint.save` writes one, so the app, the reports and training never read a raw dict.

The JSON layout is the one earlier cards used (flat `image_size`, `mean`, `std`,
`inconclusive_below`, `ood`, ...), so existing weights keep their checksum and card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from skin_model import constants as C
from skin_model.data.config import ConfigError, DataConfig
from skin_model.trust.triage import TriageRule


class CardError(ValueError):
    """A model card that is incomplete or disagrees with this code."""


@dataclass(frozen=True)
class MemberCard:
    """A further encoder and photo head of an ensemble, at its own input size."""

    backbone: str
    image_size: int
    source_sha256: str | None = None
    training: dict[str, Any] | None = None
    input_height: int | None = None

    @property
    def data_config(self) -> DataConfig:
        """The member's input (width `image_size`, height `input_height`): what it resizes photos to."""
        return DataConfig(image_size=self.image_size, input_height=self.input_height)


@dataclass(frozen=True)
class DatasetInfo:
    """Where the training photos came from and how they were split (provenance)."""

    dataset: str = "HAM10000"
    metadata_md5: str | None = None
    split: str | None = None
    train_photos: int | None = None
    val_photos: int | None = None
    test_photos: int | None = None
    citation: str | None = None
    licence: str | None = None

    @property
    def split_seed(self) -> int | None:
        """The seed of the lesion-grouped split, read from its description."""
        found = re.search(r"seed (\d+)", self.split or "")
        return int(found.group(1)) if found else None


@dataclass(frozen=True)
class TrustSettings:
    """When an answer is given: below `inconclusive_below` (top-class probability) a photo is
    inconclusive; `ood` holds the out-of-distribution thresholds (None: no check fitted);
    `triage` the "see a dermatologist" rule (None: fitted before triage existed)."""

    inconclusive_below: float = 0.5
    ood: dict[str, float] | None = None
    abstention: dict[str, Any] | None = None
    triage: TriageRule | None = None


@dataclass(frozen=True)
class ExportedGraphs:
    """The weights' forward exported for ONNX Runtime (`skin-model export`): the photo, sequence and
    heatmap graphs, each with its sha256, and the sha256 of the weights they were exported from, so
    a graph never serves weights other than its own."""

    photo_file: str
    photo_sha256: str
    sequence_file: str
    sequence_sha256: str
    weights_sha256: str
    opset: int
    heatmap_file: str | None = None  # the photo graph plus Grad-CAM's activations and gradients
    heatmap_sha256: str | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ExportedGraphs:
        return cls(**{f.name: raw.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ModelCard:
    """The card of one set of weights (see the module docstring)."""

    backbone: str = C.BACKBONE
    data_config: DataConfig = field(default_factory=DataConfig)
    name: str = "skin-model"
    architecture: str = ""
    members: tuple[MemberCard, ...] = ()
    trust: TrustSettings = field(default_factory=TrustSettings)
    data: DatasetInfo = field(default_factory=DatasetInfo)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = C.CLASSES
    class_names: dict[str, str] = field(default_factory=lambda: dict(C.CLASS_NAMES))
    malignant: tuple[str, ...] = tuple(sorted(C.MALIGNANT))
    max_sequence: int = C.MAX_SEQUENCE
    meta_dim: int = C.META_DIM
    version: str | None = None
    weights_file: str = C.WEIGHTS_FILE
    sha256: str | None = None
    size_bytes: int | None = None
    onnx: ExportedGraphs | None = None

    @property
    def image_size(self) -> int:
        return self.data_config.image_size

    def identity(self) -> tuple[str, str, str]:
        """(name, version, weights sha256) as reports and exports record them: the card's own
        version, else the package version and when training finished."""
        finished = self.training.get("finished")
        version = self.version or f"skin-model {C.VERSION}" + (f", trained {finished}" if finished else "")
        return self.name, str(version), str(self.sha256 or "unknown")

    def heatmap_scores(self) -> dict[str, dict[str, float]]:
        """Pointing-game figures per CAM method measured on test (empty when not measured)."""
        scores = self.metrics.get("heatmaps") or {}
        return {k: v for k, v in scores.items() if isinstance(v, dict)}

    def check(self, extra_backbones: tuple[str, ...] = ()) -> None:
        """Raise CardError naming every field that disagrees with this code (`extra_backbones`:
        names registered besides the EfficientNet-Lites, see model/backbones.py)."""
        differing = [name for name, mine, code in (
            ("classes", self.classes, C.CLASSES), ("class_names", self.class_names, dict(C.CLASS_NAMES)),
            ("malignant", self.malignant, tuple(sorted(C.MALIGNANT))), ("max_sequence", self.max_sequence, C.MAX_SEQUENCE),
            ("meta_dim", self.meta_dim, C.META_DIM)) if mine != code]
        if self.trust.triage is not None and tuple(sorted(self.trust.triage.malignant)) != tuple(sorted(C.MALIGNANT)):
            differing.append("triage.malignant")
        known = set(C.BACKBONES) | set(extra_backbones)
        differing += [where for where, name in [("backbone", self.backbone),
                                                 *((f"members[{i}].backbone", m.backbone)
                                                   for i, m in enumerate(self.members))] if name not in known]
        if differing:
            raise CardError(f"model card disagrees with this code on: {', '.join(differing)}")

    def to_json(self) -> dict[str, Any]:
        """The card as written next to the weights."""
        out: dict[str, Any] = {"name": self.name, "architecture": self.architecture}
        if self.version:
            out["version"] = self.version
        out["training"] = self.training
        out["inconclusive_below"] = self.trust.inconclusive_below
        if self.trust.ood is not None:
            out["ood"] = self.trust.ood
        if self.trust.abstention is not None:
            out["abstention"] = self.trust.abstention
        if self.trust.triage is not None:
            out["triage"] = self.trust.triage.to_json()
        out["data"] = {f.name: getattr(self.data, f.name) for f in fields(DatasetInfo)
                       if getattr(self.data, f.name) is not None}
        out["metrics"] = self.metrics
        out["members"] = [{k: v for k, v in {"backbone": m.backbone, "image_size": m.image_size,
                                              "input_height": m.input_height, "source_sha256": m.source_sha256,
                                              "training": m.training}.items()
                           if v is not None} for m in self.members]
        out.update({"classes": list(self.classes), "class_names": dict(self.class_names),
                    "malignant": list(self.malignant), "mean": list(self.data_config.mean),
                    "std": list(self.data_config.std), "image_size": self.data_config.image_size,
                    "interpolation": self.data_config.interpolation, "backbone": self.backbone,
                    **({"input_height": self.data_config.input_height} if self.data_config.input_height else {}),
                    **({"colour_constancy": self.data_config.colour_constancy}
                       if self.data_config.colour_constancy else {}),
                    "max_sequence": self.max_sequence, "meta_dim": self.meta_dim, "weights_file": self.weights_file,
                    "sha256": self.sha256, "size_bytes": self.size_bytes})
        if self.onnx is not None:
            out["onnx"] = {f.name: getattr(self.onnx, f.name) for f in fields(ExportedGraphs)}
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelCard:
        """Parse a card as written by `to_json` (or by earlier versions of this code)."""
        if not isinstance(raw, dict):
            raise CardError("the model card is not a JSON object")
        try:
            config = DataConfig(image_size=raw.get("image_size"), mean=tuple(raw.get("mean") or ()),
                                std=tuple(raw.get("std") or ()), interpolation=raw.get("interpolation", "bilinear"),
                                input_height=raw.get("input_height"), colour_constancy=raw.get("colour_constancy"))
            members = tuple(MemberCard(backbone=m.get("backbone"), image_size=m.get("image_size"),
                                       source_sha256=m.get("source_sha256"), training=m.get("training"),
                                       input_height=m.get("input_height"))
                            for m in raw.get("members") or [])
            for i, m in enumerate(members):
                try:
                    DataConfig(image_size=m.image_size, input_height=m.input_height)
                except ConfigError as exc:
                    raise CardError(f"members[{i}].{exc}") from exc
            known = {f.name for f in fields(DatasetInfo)}
            data = DatasetInfo(**{k: v for k, v in (raw.get("data") or {}).items() if k in known})
            trust = TrustSettings(inconclusive_below=float(raw.get("inconclusive_below", 0.5)), ood=raw.get("ood"),
                                  abstention=raw.get("abstention"),
                                  triage=TriageRule.from_json(raw["triage"]) if raw.get("triage") else None)
            return cls(backbone=raw.get("backbone"), data_config=config, name=str(raw.get("name") or "skin-model"),
                       architecture=str(raw.get("architecture") or ""), members=members, trust=trust, data=data,
                       training=dict(raw.get("training") or {}), metrics=dict(raw.get("metrics") or {}),
                       classes=tuple(raw.get("classes") or ()), class_names=dict(raw.get("class_names") or {}),
                       malignant=tuple(raw.get("malignant") or ()), max_sequence=raw.get("max_sequence"),
                       meta_dim=raw.get("meta_dim"), version=raw.get("version"),
                       weights_file=str(raw.get("weights_file") or C.WEIGHTS_FILE), sha256=raw.get("sha256"),
                       size_bytes=raw.get("size_bytes"),
                       onnx=ExportedGraphs.from_json(raw["onnx"]) if raw.get("onnx") else None)
        except (TypeError, ValueError, AttributeError, KeyError, ConfigError) as exc:
            raise CardError(f"the model card cannot be read: {exc}") from None
