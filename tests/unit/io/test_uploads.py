"""Uploads (skin_model.io.images.decode_uploads): a batch becomes photos and per-file errors, in memory only."""

from __future__ import annotations

import builtins
import datetime
import hashlib
import io
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from skin_model.io import images as uploads
from skin_model.io.errors import ImageError
from skin_model.io.images import ACCEPTED_SUFFIXES, FORMATS, MAX_SIDE, Photo, decode_upload, decode_uploads


def _encoded(size: tuple[int, int] = (64, 48), fmt: str = "PNG", seed: int = 0,
             taken: datetime.date | None = None) -> bytes:
    """A small noisy photo encoded as `fmt` (with an EXIF DateTimeOriginal when `taken` is given)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    extra = {}
    if taken is not None:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = f"{taken:%Y:%m:%d} 09:15:00"
        extra["exif"] = exif
    buf = io.BytesIO()
    img.save(buf, format=fmt, **extra)
    return buf.getvalue()


def test_a_photo_is_decoded_with_its_name_digest_and_date() -> None:
    day = datetime.date(2022, 5, 17)
    data = _encoded(fmt="JPEG", taken=day)
    photo = decode_upload("mole.jpg", data)
    assert isinstance(photo, Photo)
    assert photo.name == "mole.jpg"
    assert photo.image.mode == "RGB" and photo.image.size == (64, 48)
    assert photo.digest == hashlib.sha256(data).hexdigest()
    assert photo.date == day


def test_a_photo_without_exif_has_no_date() -> None:
    assert decode_upload("plain.png", _encoded()).date is None


def test_a_large_photo_is_kept_at_most_max_side_with_its_aspect() -> None:
    big = decode_upload("big.png", _encoded(size=(2 * MAX_SIDE + 100, MAX_SIDE + 50)))
    assert max(big.image.size) == MAX_SIDE
    assert big.image.size[0] / big.image.size[1] == pytest.approx((2 * MAX_SIDE + 100) / (MAX_SIDE + 50), rel=0.01)
    assert decode_upload("small.png", _encoded(size=(300, 200))).image.size == (300, 200), "never enlarged"


def test_a_broken_file_raises_image_error_naming_it() -> None:
    with pytest.raises(ImageError, match=r"^notes\.jpg: "):
        decode_upload("notes.jpg", b"this is a text file, not a photo\n")


def test_broken_files_become_errors_and_the_good_photos_go_on() -> None:
    good, other = _encoded(seed=1), _encoded(fmt="JPEG", seed=2)
    files = [("notes.jpg", b"this is a text file, not a photo\n"), ("good.png", good), ("empty.jpg", b""),
             ("truncated.png", good[: len(good) // 2]), ("other.jpg", other)]
    photos, errors = decode_uploads(files)
    assert [p.name for p in photos] == ["good.png", "other.jpg"], "in upload order"
    assert [name for name, _ in errors] == ["notes.jpg", "empty.jpg", "truncated.png"]
    for name, message in errors:
        assert message.startswith(f"{name}: ")
    assert "not a readable image" in errors[0][1]
    assert "empty" in errors[1][1]
    assert "truncated" in errors[2][1] or "damaged" in errors[2][1]


def test_any_failure_becomes_a_generic_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(data: bytes, name: str | None = None) -> Image.Image:
        raise RuntimeError("a decoder bug with internal details")

    monkeypatch.setattr(uploads, "load_image", explode)
    photos, errors = decode_uploads([("odd\nname.png", _encoded())])
    assert photos == []
    assert errors == [("odd\nname.png", "odd?name.png: this file could not be read as an image")]


def test_the_same_bytes_twice_are_kept_once() -> None:
    data = _encoded(seed=3)
    photos, errors = decode_uploads([("a.png", data), ("b.png", _encoded(seed=4)), ("a copy.png", data)])
    assert [p.name for p in photos] == ["a.png", "b.png"]
    assert errors == [("a copy.png", "a copy.png: the same photo was uploaded twice; it is analysed once")]
    assert decode_uploads([]) == ([], [])


def test_a_broken_file_twice_is_reported_twice() -> None:
    _, errors = decode_uploads([("x.jpg", b"junk"), ("y.jpg", b"junk")])
    assert [name for name, _ in errors] == ["x.jpg", "y.jpg"]
    assert all("not a readable image" in message for _, message in errors)


def test_accepted_suffixes_follow_the_decoders() -> None:
    assert all(s.startswith(".") and s == s.lower() for s in ACCEPTED_SUFFIXES)
    assert len(set(ACCEPTED_SUFFIXES)) == len(ACCEPTED_SUFFIXES)
    assert {".jpg", ".jpeg", ".png", ".dcm"} <= set(ACCEPTED_SUFFIXES)
    pillow = Image.registered_extensions()
    for suffix in ACCEPTED_SUFFIXES:
        if suffix not in uploads.DICOM_SUFFIXES:
            assert pillow.get(suffix) in FORMATS, f"{suffix} is opened by {pillow.get(suffix)}, not an accepted decoder"
    assert {pillow[s] for s in ACCEPTED_SUFFIXES if s in pillow} == set(FORMATS), "every decoder has a suffix"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_each_format_is_decoded(fmt: str) -> None:
    photos, errors = decode_uploads([(f"photo.{fmt.lower()}", _encoded(fmt=fmt))])
    assert errors == [] and photos[0].image.size == (64, 48)


def test_nothing_is_written_to_disk(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    written: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            written.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            written.append(str(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    files = [(f"p{i}.{fmt.lower()}", _encoded(fmt=fmt, seed=i, taken=datetime.date(2021, 1, 1)))
             for i, fmt in enumerate(["JPEG", "PNG", "TIFF"])]
    photos, errors = decode_uploads([*files, ("broken.jpg", b"junk"), ("big.png", _encoded(size=(1500, 1200)))])
    assert len(photos) == 4 and len(errors) == 1
    assert written == []
    assert list(tmp_path.iterdir()) == []


def test_a_dicom_upload_is_decoded() -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"  # VL Photographic Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "XC"
    ds.AcquisitionDate = "20200102"
    ds.set_pixel_data(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB", 8)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buf.getvalue())).Rows == 48
    photos, errors = decode_uploads([("scan.dcm", buf.getvalue())])
    assert errors == [] and photos[0].image.size == (64, 48)
    assert photos[0].date == datetime.date(2020, 1, 2)


def test_the_prompt_names_exactly_the_decoders_and_dicom() -> None:
    """One list of formats (FORMATS): the prompt's names, the uploader's suffixes and the decoders agree."""
    from skin_model.io.images import FORMAT_NAMES

    names = FORMAT_NAMES.replace(" or ", ", ").split(", ")
    assert names[-1] == "DICOM" and len(names) == len(FORMATS) + 1
    assert [n.upper() for n in names[:-1]] == [{"HEIF": "HEIC"}.get(f, f) for f in FORMATS]
