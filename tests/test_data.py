import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from pu_diffusion.batch_sampler import PUBatchSampler
from pu_diffusion.builtin_mnist import builtin_pu_dataset, builtin_pu_split
from pu_diffusion.image_data import PUDataError, find_unreadable_images, load_captions, load_image_dataset, pu_indices
from pu_diffusion.presets import PRESETS
from pu_diffusion.pu_dataset import ImageTransform
from pu_diffusion.splits import make_pu_split
from pu_diffusion.testing_utils import (
    write_captioned_folder,
    write_class_folders,
    write_imagefolder,
    write_png,
)


def test_make_pu_split_is_disjoint_deterministic_and_sized():
    classes = np.repeat(np.arange(10), 100)
    split = make_pu_split(classes, (0, 2, 4, 6, 8), 300, 30, 30, 100, seed=3)
    assert {k: len(v) for k, v in split.items()} == {
        "unlabeled_normal": 300,
        "test": 100,
        "unlabeled_sensitive": 30,
        "sensitive": 30,
    }
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
    for name in [
        "mnist-even",
        "mnist-odd",
        "cifar10-vehicles",
        "cifar10-animals",
        "stl10-vehicles",
        "stl10-animals",
        "celeba-male",
        "celeba-female",
    ]:
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
    for oracle, n_sensitive in (("clean", 200), ("labelled", 400)):  # the benchmark's oracles: U all even
        data = builtin_pu_dataset(split, oracle)
        unlabeled, sensitive = pu_indices(data, "image", "label", "sensitive")
        digits = np.asarray(data["digit"])
        assert len(unlabeled) == 2000 and (digits[unlabeled] % 2 == 0).all()
        assert len(sensitive) == n_sensitive and (digits[sensitive] % 2 == 1).all()


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


def test_sensitive_augment_zooms_s_rows_only_and_is_seeded():
    from PIL import Image

    from pu_diffusion.pu_dataset import PUImageDataset, random_zoom

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8), mode="L") for _ in range(4)]
    transform = ImageTransform(8, channels=1, center_crop=True)
    plain = PUImageDataset([{"image": image} for image in images], "image", [2, 3], transform)
    zoomed = PUImageDataset([{"image": image} for image in images], "image", [2, 3], transform, sensitive_zoom=0.5)
    for seed in range(6):
        assert torch.equal(zoomed[(0, seed)]["pixel_values"], plain[(0, seed)]["pixel_values"])  # U: untouched
        assert torch.equal(zoomed[(2, seed)]["pixel_values"], zoomed[(2, seed)]["pixel_values"])  # exact on resume
    s_views = [zoomed[(2, seed)]["pixel_values"] for seed in range(6)]
    assert zoomed[(2, 0)]["is_sensitive"] and s_views[0].shape == (1, 8, 8)
    assert any(not torch.equal(view, plain[(2, 0)]["pixel_values"]) for view in s_views)  # S: zoomed in
    assert len({view.numpy().tobytes() for view in s_views}) > 1  # a fresh draw per aug_seed
    columns = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8) * 15, (12, 1)), mode="L")  # value = 15·x
    for seed in range(50):  # a square of the central 12×12 (x in 2..13), 1/f of its side with f in [1, 1.5]
        crop = np.asarray(random_zoom(columns, 0.5, np.random.default_rng(seed)))
        assert crop.shape[0] == crop.shape[1] and 8 <= crop.shape[0] <= 12
        assert crop[0, 0] // 15 >= 2 and crop[0, -1] // 15 <= 13


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
        pu_indices(
            load_image_dataset(train_data_dir=write_imagefolder(tmp_path / "s", 0, 3)), "image", "label", "sensitive"
        )


def test_unreadable_images_are_found(tmp_path):
    root = write_imagefolder(tmp_path / "data", 4, 2)
    with open(os.path.join(root, "unlabeled", "002.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n not really a png")
    problems = find_unreadable_images(load_image_dataset(train_data_dir=root), "image")
    assert len(problems) == 1 and "002.png" in problems[0]


def test_export_builtin_split_to_a_folder_the_script_reads(tmp_path):
    from export_pu_split import export_split, parse_args

    out = tmp_path / "mnist_even"
    info = export_split(
        parse_args(
            [
                "--preset",
                "builtin-mnist-even",
                "--output_dir",
                str(out),
                "--n_unlabeled_normal",
                "40",
                "--n_unlabeled_sensitive",
                "4",
                "--n_sensitive",
                "5",
                "--n_test",
                "6",
            ]
        )
    )
    assert len(os.listdir(out / "train" / "unlabeled")) == 44 and len(os.listdir(out / "train" / "sensitive")) == 5
    assert len(os.listdir(out / "test" / "normal")) == 6
    assert all(c % 2 == 0 for c in info["classes"]["test"]) and all(c % 2 for c in info["classes"]["sensitive"])
    dataset = load_image_dataset(train_data_dir=str(out / "train"))
    unlabeled, sensitive = pu_indices(dataset, "image", "label", "sensitive")
    assert (len(unlabeled), len(sensitive)) == (44, 5)
    with pytest.raises(ValueError, match="already holds"):
        export_split(parse_args(["--preset", "builtin-mnist-even", "--output_dir", str(out)]))


def _write_jsonl(path, lines):
    """metadata.jsonl from dicts (dumped) and strings (written as they are)."""
    with open(path, "w") as handle:
        handle.write("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_sensitive_label_is_boolean_only_on_a_boolean_column():
    from datasets import Dataset, Features, Value

    digits = [0, 1, 2, 0, 3, 1, 0]
    dataset = Dataset.from_dict({"image": ["x"] * len(digits), "digit": digits})
    unlabeled, sensitive = pu_indices(dataset, "image", "digit", "0")
    assert sensitive.tolist() == [0, 3, 6] and unlabeled.tolist() == [1, 2, 4, 5]
    assert pu_indices(dataset, "image", "digit", "1")[1].tolist() == [1, 5]
    strings = Dataset.from_dict({"image": ["x"] * 3, "flag": ["False", "false", "0"]})
    assert pu_indices(strings, "image", "flag", "false")[1].tolist() == [1]  # exact string, not boolean
    flags = Dataset.from_dict(
        {"image": ["x"] * 4, "flag": [True, False, False, True]},
        features=Features({"image": Value("string"), "flag": Value("bool")}),
    )
    for label in ("false", "False", "0"):
        assert pu_indices(flags, "image", "flag", label)[1].tolist() == [1, 2]
    for label in ("TRUE", "true", "1"):
        assert pu_indices(flags, "image", "flag", label)[1].tolist() == [0, 3]
    with pytest.raises(PUDataError, match="--sensitive_label 'yes'.*boolean"):
        pu_indices(flags, "image", "flag", "yes")


def test_rows_without_a_pu_label_are_refused_by_name(tmp_path):
    from datasets import Dataset

    root = write_captioned_folder(tmp_path / "c", n_unlabeled=4, n_sensitive=2)
    rows = [json.loads(line) for line in open(os.path.join(root, "metadata.jsonl"))]
    del rows[1]["label"]
    rows[4]["label"] = None
    _write_jsonl(os.path.join(root, "metadata.jsonl"), rows)
    dataset = load_image_dataset(train_data_dir=root)
    with pytest.raises(
        PUDataError, match=r"--pu_label_column 'label'.* 2 rows: unlabeled_001\.png, sensitive_000\.png"
    ):
        pu_indices(dataset, "image", "label", "sensitive")
    labels = ["unlabeled", None, "sensitive"] + [None] * 7
    in_memory = Dataset.from_dict({"image": ["x"] * 10, "label": labels})
    with pytest.raises(
        PUDataError, match=r"--pu_label_column 'label'.* 8 rows: row 1, row 3, row 4, row 5, row 6 and 3 more\."
    ):
        pu_indices(in_memory, "image", "label", "sensitive")


def test_load_captions_refuses_missing_and_non_string_captions(tmp_path):
    from datasets import Dataset

    root = write_captioned_folder(tmp_path / "c", n_unlabeled=3, n_sensitive=2)
    dataset = load_image_dataset(train_data_dir=root)
    assert load_captions(dataset, "text") == ["a photo of a man"] * 3 + ["a photo of brad"] * 2
    with pytest.raises(PUDataError, match=r"--caption_column 'caption'.*\['image', 'text', 'label'\].*metadata\.jsonl"):
        load_captions(dataset, "caption")
    rows = [json.loads(line) for line in open(os.path.join(root, "metadata.jsonl"))]
    del rows[2]["text"]
    _write_jsonl(os.path.join(root, "metadata.jsonl"), rows)
    with pytest.raises(PUDataError, match=r"--caption_column 'text'.*1 row: unlabeled_002\.png"):
        load_captions(load_image_dataset(train_data_dir=root), "text")
    numbers = Dataset.from_dict({"image": ["x"] * 3, "text": [1, 2, 3]})
    with pytest.raises(PUDataError, match=r"3 rows: row 0, row 1, row 2.*found int"):
        load_captions(numbers, "text")


def test_images_not_listed_in_metadata_are_refused(tmp_path):
    root = write_captioned_folder(tmp_path / "c", n_unlabeled=3, n_sensitive=2)
    write_png(os.path.join(root, "extra.PNG"), np.zeros((4, 4), np.uint8))
    write_png(os.path.join(root, "more", "b.jpg"), np.zeros((4, 4), np.uint8))
    with pytest.raises(PUDataError, match=r"2 images.*not listed.*metadata\.jsonl.*: extra\.PNG, more/b\.jpg"):
        load_image_dataset(train_data_dir=root)
    # a metadata.jsonl in a sub-folder lists the images of that sub-folder (file_name relative to it)
    nested = tmp_path / "nested"
    for name in ("top.png", "sub/a.png", "sub/b.png"):
        write_png(os.path.join(nested, name), np.zeros((4, 4), np.uint8))
    _write_jsonl(nested / "metadata.jsonl", [{"file_name": "top.png", "label": "unlabeled"}])
    _write_jsonl(
        nested / "sub" / "metadata.jsonl",
        [{"file_name": "a.png", "label": "unlabeled"}, {"file_name": "b.png", "label": "sensitive"}],
    )
    assert len(load_image_dataset(train_data_dir=str(nested))) == 3
    write_png(os.path.join(nested, "sub", "c.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(PUDataError, match=r"1 image .*sub/c\.png"):
        load_image_dataset(train_data_dir=str(nested))


def test_bad_metadata_lines_are_refused_with_file_and_line(tmp_path):
    root = write_captioned_folder(tmp_path / "c", n_unlabeled=2, n_sensitive=1)
    metadata = os.path.join(root, "metadata.jsonl")
    good = [json.loads(line) for line in open(metadata)]
    _write_jsonl(metadata, [good[0], "", "   ", good[1], good[2], ""])  # blank lines are fine
    assert len(load_image_dataset(train_data_dir=root)) == 3
    cases = [
        ([good[0], "", '{"file_name": "unlabeled_001.png", text: "x"}'], r"line 3: not valid JSON"),
        ([good[0], '["unlabeled_001.png"]'], r"line 2: a JSON array, not an object"),
        ([good[0], {"name": "unlabeled_001.png", "text": "x"}], r"line 2: no \"file_name\""),
        ([good[0], {"file_name": 3, "text": "x"}], r"line 2: no \"file_name\""),
        ([good[0], {**good[1], "text": 7}], r"line 2: \"text\" is a number but line 1 has a string"),
    ]
    for lines, message in cases:
        _write_jsonl(metadata, lines + [good[2]])
        with pytest.raises(PUDataError, match=r"metadata\.jsonl.* " + message):
            load_image_dataset(train_data_dir=root)


def test_a_folder_without_images_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PUDataError, match=r"--train_data_dir '.*empty' holds no images.*unlabeled/.*sensitive/"):
        load_image_dataset(train_data_dir=str(empty))
    (empty / "notes.txt").write_text("no pictures here")
    (empty / ".hidden.png").write_bytes(b"")  # hidden files are ignored by datasets
    with pytest.raises(PUDataError, match=r"holds no images"):
        load_image_dataset(train_data_dir=str(empty))


def test_16_bit_pngs_are_rescaled_not_clipped(tmp_path):
    from PIL import Image

    gradient16 = np.tile(np.linspace(0, 65535, 16), (16, 1)).astype(np.uint16)
    gradient8 = np.rint(gradient16 / 257).astype(np.uint8)
    write_png(tmp_path / "g16" / "unlabeled" / "g.png", gradient16)
    write_png(tmp_path / "g8" / "unlabeled" / "g.png", gradient8)
    image16 = load_image_dataset(train_data_dir=str(tmp_path / "g16"))[0]["image"]
    image8 = load_image_dataset(train_data_dir=str(tmp_path / "g8"))[0]["image"]
    assert image16.mode.startswith("I") and image8.mode == "L"  # I;16 (I in older Pillow)
    for channels in (1, 3):
        transform = ImageTransform(16, channels=channels, center_crop=True)
        tensor16, tensor8 = transform(image16), transform(image8)
        assert tensor16.min() == -1 and tensor16.max() == 1 and (tensor16 < 1).float().mean() > 0.5
        assert torch.allclose(tensor16, tensor8, atol=1 / 127.5)
    as_int32 = Image.fromarray(gradient16.astype(np.int32))
    as_float = Image.fromarray(gradient16.astype(np.float32) / 65535)
    transform = ImageTransform(16, channels=1, center_crop=True)
    for image in (as_int32, as_float):
        assert torch.allclose(transform(image), transform(Image.fromarray(gradient8)), atol=1 / 127.5)


def test_export_split_reads_a_local_labelled_imagefolder(tmp_path):
    from export_pu_split import export_split, parse_args

    # class folders 1..4: imagefolder numbers them 0..3, so ids ≠ digits; the export compares folder names
    source = write_class_folders(tmp_path / "digits", {"1": 2, "2": 3, "3": 2, "4": 3})
    out = tmp_path / "out"
    info = export_split(
        parse_args(
            [
                "--preset",
                "builtin-mnist-even",
                "--output_dir",
                str(out),
                "--train_data_dir",
                source,
                "--class_column",
                "label",
                "--n_unlabeled_normal",
                "4",
                "--n_unlabeled_sensitive",
                "1",
                "--n_sensitive",
                "2",
                "--n_test",
                "2",
            ]
        )
    )
    assert set(info["classes"]["test"] + info["classes"]["unlabeled_normal"]) == {2, 4}
    assert set(info["classes"]["sensitive"] + info["classes"]["unlabeled_sensitive"]) <= {1, 3}
    assert len(os.listdir(out / "train" / "unlabeled")) == 5 and len(os.listdir(out / "test" / "normal")) == 2
    unlabeled, sensitive = pu_indices(
        load_image_dataset(train_data_dir=str(out / "train")), "image", "label", "sensitive"
    )
    assert (len(unlabeled), len(sensitive)) == (5, 2)


def test_builtin_contamination_rebuilds_u_and_keeps_the_test_digits():
    from pu_diffusion.builtin_mnist import builtin_pu_split

    preset, rebuilt = builtin_pu_split("builtin-mnist-even", 0), builtin_pu_split("builtin-mnist-even", 0, 0.2)
    assert len(preset["indices"]["unlabeled_sensitive"]) == 200  # 1/11 of 2,200
    assert len(rebuilt["indices"]["unlabeled_sensitive"]) == 500  # 500 / 2,500 = 0.2
    for part in ("unlabeled_normal", "test"):
        assert rebuilt["indices"][part] == preset["indices"][part]
    assert len(rebuilt["indices"]["sensitive"]) == 200
    assert not set(rebuilt["indices"]["sensitive"]) & set(rebuilt["indices"]["unlabeled_sensitive"])
