import os
from collections import Counter

import numpy as np
import pytest
import torch

from pu_diffusion.builtin_mnist import builtin_pu_dataset, builtin_pu_split
from pu_diffusion.image_data import ImageTransform, PUDataError, find_unreadable_images, load_image_dataset, pu_indices
from pu_diffusion.sampling import PUBatchSampler
from pu_diffusion.testing_utils import write_imagefolder
from pu_diffusion.splits import PRESETS, make_pu_split


def test_make_pu_split_is_disjoint_deterministic_and_sized():
    classes = np.repeat(np.arange(10), 100)
    split = make_pu_split(classes, (0, 2, 4, 6, 8), 300, 30, 30, 100, seed=3)
    assert {k: len(v) for k, v in split.items()} == {"unlabeled_normal": 300, "test": 100,
                                                     "unlabeled_sensitive": 30, "sensitive": 30}
    rows = np.concatenate(list(split.values()))
    assert len(set(rows.tolist())) == len(rows)
    assert set(classes[split["test"]] % 2) == {0} and set(classes[split["sensitive"]] % 2) == {1}
    again = make_pu_split(classes, (0, 2, 4, 6, 8), 300, 30, 30, 100, seed=3)
    assert all((again[k] == split[k]).all() for k in split)
    other = make_pu_split(classes, (0, 2, 4, 6, 8), 300, 30, 30, 100, seed=4)
    assert not (other["sensitive"] == split["sensitive"]).all()
    with pytest.raises(ValueError, match="normal rows"):
        make_pu_split(classes, (0, 2, 4, 6, 8), 500, 30, 30, 100)


def test_paper_presets_are_all_there():
    for name in ["mnist-even", "mnist-odd", "cifar10-vehicles", "cifar10-animals", "stl10-vehicles",
                 "stl10-animals", "celeba-male", "celeba-female"]:
        assert name in PRESETS
    assert (PRESETS["mnist-even"].n_unlabeled_normal, PRESETS["mnist-even"].n_sensitive) == (25000, 2500)
    assert PRESETS["cifar10-vehicles"].normal_classes == (0, 1, 8, 9)


def test_builtin_split_follows_the_protocol():
    split = builtin_pu_split("builtin-mnist-even", 0)
    sizes = {k: len(v) for k, v in split["indices"].items()}
    assert sizes == {"unlabeled_normal": 2000, "unlabeled_sensitive": 200, "sensitive": 200, "test": 500}
    dataset = builtin_pu_dataset(split)
    unlabeled, sensitive = pu_indices(dataset, "image", "label", "sensitive")
    assert len(unlabeled) == 2200 and len(sensitive) == 200
    digits = np.asarray(dataset["digit"])
    assert (digits[sensitive] % 2 == 1).all()
    assert (digits[unlabeled] % 2 == 1).sum() == 200  # U is 10:1 normal:sensitive


def test_batch_sampler_fixed_counts_epochs_and_s_cycling():
    unlabeled, sensitive = np.arange(0, 20), np.arange(100, 106)
    sampler = PUBatchSampler(unlabeled, sensitive, 4, 3, seed=1)
    assert len(sampler) == 5
    batches = list(sampler)
    for batch in batches:
        rows = [row for row, _ in batch]
        assert sum(r < 100 for r in rows) == 4 and sum(r >= 100 for r in rows) == 3
    assert sorted(r for b in batches for r, _ in b if r < 100) == list(range(20))  # one pass over U
    s_rows = [r for b in batches[:2] for r, _ in b if r >= 100]
    assert sorted(s_rows) == list(range(100, 106))  # 6 S draws = one full pass over S
    sampler.set_epoch(1)
    assert [r for r, _ in next(iter(sampler))] != [r for r, _ in batches[0]]
    assert sampler.batch(0, 3) == batches[3]  # any batch can be recomputed (exact resume)
    assert PUBatchSampler(unlabeled, sensitive, 4, 3, seed=1).batch(0, 0) == batches[0]
    counts = Counter(r for e in range(3) for i in range(5) for r, _ in sampler.batch(e, i) if r >= 100)
    assert set(counts.values()) == {45 // 6, 45 // 6 + 1}  # S stays balanced across epochs


def test_image_transform_shapes_range_and_seeded_flip():
    from PIL import Image

    image = Image.fromarray(np.tile(np.arange(20, dtype=np.uint8) * 12, (10, 1)), mode="L")
    transform = ImageTransform(8, channels=3, center_crop=True, random_flip=True)
    tensors = [transform(image, seed) for seed in range(8)]
    assert tensors[0].shape == (3, 8, 8) and tensors[0].min() >= -1 and tensors[0].max() <= 1
    assert torch.equal(transform(image, 5), tensors[5])
    flipped = [bool((t[0, 0, 0] > t[0, 0, -1]).item()) for t in tensors]
    assert any(flipped) and not all(flipped)


def test_imagefolder_layout_is_read_as_u_and_s(tmp_path):
    root = write_imagefolder(tmp_path / "data", n_unlabeled=5, n_sensitive=3)
    dataset = load_image_dataset(train_data_dir=root)
    unlabeled, sensitive = pu_indices(dataset, "image", "label", "sensitive")
    assert (len(unlabeled), len(sensitive)) == (5, 3)


def test_missing_columns_and_rows_are_refused(tmp_path):
    dataset = load_image_dataset(train_data_dir=write_imagefolder(tmp_path / "d", 4, 2))
    with pytest.raises(PUDataError, match="--image_column 'img'"):
        pu_indices(dataset, "img", "label", "sensitive")
    with pytest.raises(PUDataError, match="--pu_label_column 'is_bad'"):
        pu_indices(dataset, "image", "is_bad", "sensitive")
    with pytest.raises(PUDataError, match="No sensitive"):
        pu_indices(dataset, "image", "label", "nope")
    with pytest.raises(PUDataError, match="No unlabeled"):
        pu_indices(load_image_dataset(train_data_dir=write_imagefolder(tmp_path / "s", 0, 3)), "image", "label",
                   "sensitive")


def test_unreadable_images_are_found(tmp_path):
    root = write_imagefolder(tmp_path / "data", 4, 2)
    with open(os.path.join(root, "unlabeled", "002.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n not really a png")
    problems = find_unreadable_images(load_image_dataset(train_data_dir=root), "image")
    assert len(problems) == 1 and "002.png" in problems[0]


def test_export_builtin_split_to_a_folder_the_script_reads(tmp_path):
    from pu_diffusion.export_split import export_split, parse_args

    out = tmp_path / "mnist_even"
    info = export_split(parse_args(["--preset", "builtin-mnist-even", "--output_dir", str(out),
                                    "--n_unlabeled_normal", "40", "--n_unlabeled_sensitive", "4",
                                    "--n_sensitive", "5", "--n_test", "6"]))
    assert len(os.listdir(out / "train" / "unlabeled")) == 44 and len(os.listdir(out / "train" / "sensitive")) == 5
    assert len(os.listdir(out / "test" / "normal")) == 6
    assert all(c % 2 == 0 for c in info["classes"]["test"]) and all(c % 2 for c in info["classes"]["sensitive"])
    dataset = load_image_dataset(train_data_dir=str(out / "train"))
    unlabeled, sensitive = pu_indices(dataset, "image", "label", "sensitive")
    assert (len(unlabeled), len(sensitive)) == (44, 5)
    with pytest.raises(ValueError, match="already holds"):
        export_split(parse_args(["--preset", "builtin-mnist-even", "--output_dir", str(out)]))
