"""skin_model.data.ham10000: both HAM10000 layouts, clear errors, lesion-grouped splits, patient context."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_model.constants import CLASSES, META_DIM, SEXES, SITES
from skin_model.data.ham10000 import (
    METADATA_FILE,
    SPLITS,
    DatasetError,
    load_ham10000,
    resolve_root,
    split_lesions,
    training_tables,
)
from skin_model.data.preprocess import encode_metadata, table_metadata


@pytest.mark.parametrize("layout", ["flat", "official"])
def test_load_both_layouts(fake_ham, layout: str) -> None:
    root = fake_ham(layout)
    meta = pd.read_csv(root / METADATA_FILE)
    ham = load_ham10000(root)
    table = ham.table
    assert ham.root == root
    assert list(table.image_id) == list(meta.image_id)
    assert set(table.dx) == set(CLASSES)
    for row in table.itertuples():
        path = Path(row.path)
        assert path.is_file() and path.name == f"{row.image_id}.jpg"
        assert row.label == CLASSES.index(row.dx)
        assert row.mask_path is None
    folders = {Path(p).parent.name for p in table.path}
    if layout == "flat":
        assert folders == {"images"}
    else:
        assert folders == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert ham.fingerprint == hashlib.md5((root / METADATA_FILE).read_bytes()).hexdigest()
    lesion_id = table.lesion_id.iloc[-1]
    assert set(ham.lesion(lesion_id).image_id) == set(meta.image_id[meta.lesion_id == lesion_id])


def test_fake_ham_shape(fake_ham) -> None:
    table = load_ham10000(fake_ham()).table
    per_lesion = table.groupby("lesion_id").size()
    assert set(per_lesion) == {1, 2, 3}
    assert table.lesion_id.nunique() == 3 * len(CLASSES)


def test_masks_are_found_when_present(fake_ham) -> None:
    root = fake_ham()
    (root / "masks").mkdir()
    first = pd.read_csv(root / METADATA_FILE).image_id.iloc[0]
    (root / "masks" / f"{first}_segmentation.png").write_bytes(b"")
    table = load_ham10000(root).table
    assert table.mask_path.iloc[0].endswith(f"masks/{first}_segmentation.png")
    assert table.mask_path.iloc[1:].isna().all()


def test_missing_metadata_csv(fake_ham) -> None:
    root = fake_ham()
    (root / METADATA_FILE).unlink()
    with pytest.raises(DatasetError, match=f"{METADATA_FILE} is missing from {root}"):
        load_ham10000(root)


def test_listed_image_missing(fake_ham) -> None:
    root = fake_ham()
    missing = pd.read_csv(root / METADATA_FILE).image_id.iloc[3]
    (root / "images" / f"{missing}.jpg").unlink()
    with pytest.raises(DatasetError, match=rf"1 images listed .* \(first: {missing}\.jpg\)"):
        load_ham10000(root)
    # metadata-only use does not need the image
    table = load_ham10000(root, require_images=False).table
    assert table.path[table.image_id == missing].isna().all()
    assert table.path[table.image_id != missing].notna().all()


def test_no_image_folder(fake_ham) -> None:
    root = fake_ham()
    for p in (root / "images").iterdir():
        p.unlink()
    (root / "images").rmdir()
    with pytest.raises(DatasetError, match="no images in .*HAM10000_images_part_1"):
        load_ham10000(root)


def test_missing_columns_and_unknown_diagnosis(fake_ham) -> None:
    root = fake_ham()
    meta = pd.read_csv(root / METADATA_FILE)
    meta.drop(columns=["localization"]).to_csv(root / METADATA_FILE, index=False)
    with pytest.raises(DatasetError, match="lacks the columns: localization"):
        load_ham10000(root)
    meta.assign(dx=meta.dx.replace("df", "scc")).to_csv(root / METADATA_FILE, index=False)
    with pytest.raises(DatasetError, match="unknown diagnoses: scc"):
        load_ham10000(root)


def test_folder_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"HAM10000 folder not found: {missing}"):
        load_ham10000(missing)


def test_no_argument_and_no_env(monkeypatch) -> None:
    monkeypatch.delenv("HAM10000_DIR", raising=False)
    with pytest.raises(DatasetError, match="HAM10000_DIR"):
        load_ham10000()
    with pytest.raises(DatasetError, match="HAM10000_DIR"):
        resolve_root(None)


def test_dataset_error_is_a_file_not_found_error() -> None:
    assert issubclass(DatasetError, FileNotFoundError)


def test_env_var_is_honoured(fake_ham, monkeypatch) -> None:
    root = fake_ham("official")
    monkeypatch.setenv("HAM10000_DIR", str(root))
    assert resolve_root() == root
    assert load_ham10000().root == root
    # an explicit argument wins over the environment
    other = fake_ham("flat", lesions_per_class=1)
    assert load_ham10000(other).root == other


def test_split_lesions_on_fake_data(fake_ham) -> None:
    table = load_ham10000(fake_ham(lesions_per_class=8)).table
    split = split_lesions(table, seed=0)
    assert split.name == "split" and len(split) == len(table)
    assert set(split) == set(SPLITS)
    # no lesion in two splits
    assert (table.assign(split=split).groupby("lesion_id").split.nunique() == 1).all()
    # deterministic for a seed, different for another
    assert split.equals(split_lesions(table, seed=0))
    assert split.equals(split_lesions(table.sample(frac=1.0, random_state=1), seed=0).sort_index())
    assert not split.equals(split_lesions(table, seed=1))
    # stratified: 8 lesions of each class -> 1 test, 1 val, 6 train lesions per class
    lesions = table.assign(split=split).drop_duplicates("lesion_id")
    counts = lesions.groupby(["dx", "split"]).size().unstack()
    assert (counts["test"] == 1).all() and (counts["val"] == 1).all() and (counts["train"] == 6).all()


@pytest.mark.slow
def test_split_lesions_on_real_data(ham_dir: Path) -> None:
    table = load_ham10000(ham_dir).table
    assert len(table) == 10_015
    assert table.lesion_id.nunique() == 7_470
    split = split_lesions(table, seed=0)
    assert split.notna().all()
    labelled = table.assign(split=split)
    assert (labelled.groupby("lesion_id").split.nunique() == 1).all()
    for name in SPLITS:
        assert set(labelled[labelled.split == name].dx) == set(CLASSES), name
    fractions = labelled.split.value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(0.70, abs=0.02)
    assert fractions["val"] == pytest.approx(0.15, abs=0.02)
    assert fractions["test"] == pytest.approx(0.15, abs=0.02)
    assert split.equals(split_lesions(table, seed=0))


def test_encode_metadata_unknown_is_zero() -> None:
    for vec in (encode_metadata(), encode_metadata(float("nan"), "unknown", "unknown"),
                encode_metadata(None, None, "somewhere else")):
        assert vec.shape == (META_DIM,) and vec.dtype == np.float32
        assert not vec.any()


def test_encode_metadata_known_fields() -> None:
    vec = encode_metadata(45.0, "Female", "Lower Extremity")
    assert vec[0] == pytest.approx(0.45) and vec[1] == 1.0
    assert vec[2 + SEXES.index("female")] == 1.0
    assert vec[2 + len(SEXES) + SITES.index("lower extremity")] == 1.0
    assert vec.sum() == pytest.approx(0.45 + 3)
    age_only = encode_metadata(age=0)
    assert age_only[1] == 1.0 and age_only[0] == 0.0  # age 0 is known, not missing


def test_table_metadata(fake_ham) -> None:
    table = load_ham10000(fake_ham()).table
    meta = table_metadata(table)
    assert meta.shape == (len(table), META_DIM)
    for i in (0, len(table) - 1):
        row = table.iloc[i]
        assert np.array_equal(meta[i], encode_metadata(row.age, row.sex, row.localization))
    assert table_metadata(table.iloc[:0]).shape == (0, META_DIM)


def test_scoring_a_photo_does_not_load_pandas() -> None:
    # A fresh interpreter (this one has pandas already): the app's classify page must not pay for it.
    script = "import sys, skin_model.predict; assert 'pandas' not in sys.modules, 'pandas was imported'"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_training_tables_are_the_splits_train_and_val_rows(fake_ham) -> None:
    table = load_ham10000(fake_ham()).table
    split = split_lesions(table)
    train, val = training_tables(table)
    assert sorted(train.image_id) == sorted(table.image_id[split == "train"])
    assert sorted(val.image_id) == sorted(table.image_id[split == "val"])
    small_train, small_val = training_tables(table, limit=3)
    assert len(small_train) == min(3, len(train)) and len(small_val) == min(3, len(val))
    assert set(small_train.image_id) <= set(train.image_id) and set(small_val.image_id) <= set(val.image_id)
