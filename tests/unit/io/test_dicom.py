"""DICOM dermoscopy through images.load_image: RGB, YBR_FULL, several frames, monochrome, clear errors."""

from __future__ import annotations

import datetime
import io
import warnings

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import convert_color_space  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid  # noqa: E402

from skin_model.io import dicom  # noqa: E402
from skin_model.io.images import ImageError, load_image, photo_date  # noqa: E402


def make_dicom(pixels: np.ndarray, photometric: str = "RGB", bits: int = 8,
               sop_class: str = dicom.VL_PHOTOGRAPHIC, **tags: object) -> bytes:
    """A DICOM Part 10 file (explicit VR little endian) holding `pixels`, as bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XC"
    ds.PatientName = "Test^Lesion"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def lesion_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """Skin-coloured background, a dark-brown ellipse and a red strip: colour errors would show."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = (226, 178, 152)
    arr[((xx - w / 2) / (w / 4)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 < 1] = (96, 58, 36)
    arr[:6] = (220, 30, 40)
    return arr


def close(img: Image.Image, expected: np.ndarray, tol: float) -> bool:
    return img.mode == "RGB" and np.abs(np.asarray(img, dtype=int) - expected.astype(int)).max() <= tol


def test_rgb_dicom_loads_exactly() -> None:
    rgb = lesion_rgb()
    data = make_dicom(rgb)
    assert dicom.is_dicom(data)
    img = load_image(data, name="lesion.dcm")
    assert img.size == (64, 48)
    assert close(img, rgb, 0)
    assert img.info["dicom"]["sop_class"] == dicom.VL_PHOTOGRAPHIC
    assert "note" not in img.info


def test_ybr_full_is_converted_to_rgb() -> None:
    rgb = lesion_rgb()
    data = make_dicom(convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL", sop_class=dicom.VL_MICROSCOPIC)
    img = load_image(data)
    assert close(img, rgb, 2)  # YCbCr round trip in 8 bits: off by at most a unit or two
    assert img.info["dicom"]["photometric"] == "YBR_FULL"


def test_ybr_full_422_is_upsampled_and_converted() -> None:
    rgb = lesion_rgb()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    # 4:2:2 native layout: Y1 Y2 Cb Cr per pair of pixels (chroma of the pair averaged)
    pairs = ybr.reshape(48, 32, 2, 3).astype(int)
    packed = np.empty((48, 32, 4), dtype=np.uint8)
    packed[..., 0], packed[..., 1] = pairs[:, :, 0, 0], pairs[:, :, 1, 0]
    packed[..., 2] = (pairs[:, :, 0, 1] + pairs[:, :, 1, 1]) // 2
    packed[..., 3] = (pairs[:, :, 0, 2] + pairs[:, :, 1, 2]) // 2
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dicom.VL_PHOTOGRAPHIC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = dicom.VL_PHOTOGRAPHIC, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 48, 64, 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = packed.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    img = load_image(buf.getvalue())
    # chroma is shared by pixel pairs, so edges blur a little; the picture must still match
    diff = np.abs(np.asarray(img, dtype=int) - rgb.astype(int))
    assert img.mode == "RGB" and img.size == (64, 48)
    assert diff.mean() < 3 and np.median(diff) <= 1


def test_several_frames_take_the_first_and_say_so() -> None:
    first = lesion_rgb()
    frames = np.stack([first, 255 - first, first // 2])
    img = load_image(make_dicom(frames), name="cine.dcm")
    assert close(img, first, 0)
    assert img.info["dicom"]["frames"] == 3
    assert "3 frames" in img.info["note"] and "first" in img.info["note"]


def test_monochrome_8_and_16_bit() -> None:
    grey = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (40, 1))
    img = load_image(make_dicom(grey, "MONOCHROME2"))
    assert close(img, np.repeat(grey[..., None], 3, axis=2), 0)
    deep = np.tile(np.linspace(1000, 4000, 64).astype(np.uint16), (40, 1))
    img16 = np.asarray(load_image(make_dicom(deep, "MONOCHROME2", bits=12)))
    assert img16[0, 0].tolist() == [0, 0, 0] and img16[0, -1].tolist() == [255, 255, 255]  # stretched to 8 bits


def test_rle_compressed_dicom_decodes() -> None:
    rgb = lesion_rgb()
    ds = pydicom.dcmread(io.BytesIO(make_dicom(rgb)))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert close(load_image(buf.getvalue()), rgb, 0)


def test_dicom_date_and_photo_date() -> None:
    rgb = lesion_rgb()
    assert dicom.dicom_date(make_dicom(rgb, AcquisitionDateTime="20190704103000")) == datetime.date(2019, 7, 4)
    data = make_dicom(rgb, ContentDate="20210102", StudyDate="20200101")
    assert photo_date(data) == datetime.date(2021, 1, 2)
    assert photo_date(make_dicom(rgb)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when writing the malformed date
        malformed = make_dicom(rgb, ContentDate="2021")
    assert photo_date(malformed) is None  # malformed: unknown, not an error


@pytest.mark.parametrize("case", ["truncated", "garbage", "no_pixels", "palette", "undecodable", "too_small"])
def test_bad_dicom_raises_image_error(case: str) -> None:
    good = make_dicom(lesion_rgb())
    if case == "truncated":
        data = good[:-500]
    elif case == "garbage":
        data = b"\0" * 128 + b"DICM" + b"\xff\x13" * 40
    elif case == "no_pixels":
        data = make_dicom(None)
    elif case == "palette":
        ds = pydicom.dcmread(io.BytesIO(make_dicom(lesion_rgb()[..., 0], "MONOCHROME2")))
        ds.PhotometricInterpretation = "PALETTE COLOR"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
    elif case == "undecodable":  # JPEG 2000 without a decoder plugin installed (or garbage codestream)
        ds = pydicom.dcmread(io.BytesIO(good))
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
        ds["PixelData"].VR = "OB"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
    else:
        data = make_dicom(lesion_rgb(8, 8))
    with pytest.raises(ImageError) as info:
        load_image(data, name="scan.dcm")
    message = str(info.value)
    assert message.startswith("scan.dcm: ") and "\n" not in message
    if case == "no_pixels":
        assert "no pixel data" in message
    if case == "palette":
        assert "PALETTE COLOR" in message
    if case == "too_small":
        assert "too small" in message


def test_dicom_file_on_disk_is_scored_like_a_photo(tmp_path) -> None:
    path = tmp_path / "visit.dcm"
    path.write_bytes(make_dicom(lesion_rgb(), ContentDate="20200315"))
    img = load_image(path)
    assert img.size == (64, 48)
    assert photo_date(path) == datetime.date(2020, 3, 15)


def test_cli_scores_a_folder_with_dicom(tmp_path, capsys, tiny_weights) -> None:
    import csv

    from skin_model.cli import main

    folder = tmp_path / "visits"
    folder.mkdir()
    (folder / "a_visit.dcm").write_bytes(make_dicom(lesion_rgb(), ContentDate="20200315"))
    Image.fromarray(lesion_rgb()).save(folder / "b_visit.png")
    out = tmp_path / "scores.csv"
    assert main(["predict", str(folder), "--weights", str(tiny_weights), "--device", "cpu",
                 "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a_visit.dcm", "b_visit.png"]
    # the same pixels through DICOM and PNG get the same scores
    assert [rows[0][f"p_{c}"] for c in ("mel", "nv")] == [rows[1][f"p_{c}"] for c in ("mel", "nv")]
    assert "a_visit.dcm" in capsys.readouterr().out
