"""Dataset readers on fake trees in the real layouts, their layout errors, and the verify command."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fake_trees as ft
from noisy_prompt.data.base import DatasetLayoutError, open_rgb
from noisy_prompt.data.readers import coop, fulldata
from noisy_prompt.data.readers.templates import TEMPLATES
from noisy_prompt.data.verify import DATASETS, LAYOUTS, main
from paths import REPO

SPLIT_CASES = {
    # name: (writer, reader, dataset dir, image dir, split file, class names after "_" -> " ")
    "caltech101": (ft.write_caltech101, coop.read_caltech101, "caltech-101", "101_ObjectCategories",
                   "split_zhou_Caltech101.json", ["accordion", "airplane", "face", "stop sign"]),
    "oxford_pets": (ft.write_oxford_pets, coop.read_oxford_pets, "oxford_pets", "images",
                    "split_zhou_OxfordPets.json", ["abyssinian", "american bulldog", "great pyrenees"]),
    "oxford_flowers": (ft.write_oxford_flowers, coop.read_oxford_flowers, "oxford_flowers", "jpg",
                       "split_zhou_OxfordFlowers.json", ft.FLOWERS_CLASSES),
    "food101": (ft.write_food101, coop.read_food101, "food-101", "images", "split_zhou_Food101.json",
                ["apple pie", "baby back ribs", "beef tartare"]),
    "dtd": (ft.write_dtd, coop.read_dtd, "dtd", "images", "split_zhou_DescribableTextures.json", ft.DTD_CLASSES),
    "ucf101": (ft.write_ucf101, coop.read_ucf101, "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               ["Apply Eye Makeup", "Apply Lipstick", "Archery"]),
    "stanford_cars": (ft.write_stanford_cars, coop.read_stanford_cars, "stanford_cars", "",
                      "split_zhou_StanfordCars.json", ft.CARS_CLASSES),
    "sun397": (ft.write_sun397, coop.read_sun397, "sun397", "SUN397", "split_zhou_SUN397.json",
               ["abbey", "indoor airplane cabin", "outdoor apartment building"]),
    "eurosat": (ft.write_eurosat, coop.read_eurosat, "eurosat", "2750", "split_zhou_EuroSAT.json",
                ft.EUROSAT_CLASSES),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def assert_rgb(im):
    assert isinstance(im, Image.Image) and im.mode == "RGB"


# ---------------------------------------------------------------------------------------------
# split_zhou datasets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_split_reader(tmp_path, name):
    write, read, ds_dir, img_dir, _, names = SPLIT_CASES[name]
    root = write(tmp_path / "a", n_train=[4, 6, 5] + [3] * (len(names) - 3))
    before = snapshot(root)
    s = read(root)
    assert snapshot(root) == before  # readers write nothing
    assert s.name == name and s.classnames == names
    assert s.templates == TEMPLATES[name]
    assert [s.train.labels.count(y) for y in range(3)] == [4, 6, 5]
    assert len(s.val) == 2 * len(names) and len(s.test) == 2 * len(names)
    assert s.val.labels == sorted(s.val.labels) and set(s.test.labels) == set(range(len(names)))
    prefix = f"{ds_dir}/{img_dir}/" if img_dir else f"{ds_dir}/"
    assert all(k.startswith(prefix) for k in s.train.keys + s.val.keys + s.test.keys)
    assert all(Path(it) == root / k for it, k in zip(s.test.items, s.test.keys))
    assert len(set(s.train.keys + s.val.keys + s.test.keys)) == len(s.train) + len(s.val) + len(s.test)
    assert_rgb(s.train.load(0))
    assert s.test.load(len(s.test) - 1).size == ft.SIZE
    # keys do not depend on where the data root is
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    assert read(moved).train.keys == s.train.keys


@pytest.mark.parametrize("name", ["oxford_pets", "ucf101", "stanford_cars"])
def test_split_reader_lists_every_missing_path(tmp_path, name):
    write, read, ds_dir, img_dir, split_file, _ = SPLIT_CASES[name]
    root = write(tmp_path)
    (root / ds_dir / split_file).unlink()
    with pytest.raises(DatasetLayoutError) as e:
        read(root)
    assert e.value.missing == [str(root / ds_dir / split_file)]
    assert "CoOp" in str(e.value) and "expected layout" in str(e.value)
    with pytest.raises(DatasetLayoutError) as e:
        read(tmp_path / "empty")
    expected_img = tmp_path / "empty" / ds_dir / img_dir if img_dir else tmp_path / "empty" / ds_dir
    assert e.value.missing == [str(expected_img), str(tmp_path / "empty" / ds_dir / split_file)]


def test_split_file_errors_name_file_and_entry(tmp_path):
    root = ft.write_dtd(tmp_path)
    path = root / "dtd" / "split_zhou_DescribableTextures.json"
    path.write_text('{"train": [["a.jpg", 0, "banded"]], "val": [], "test": [["b.jpg", 0, "striped"]]}')
    with pytest.raises(ValueError, match=r"label 0 is named both 'banded' and 'striped'") as e:
        coop.read_dtd(root)
    assert str(path) in str(e.value)
    path.write_text('{"train": [["a.jpg", "0", "banded"]], "val": [], "test": []}')
    with pytest.raises(ValueError, match=r"train\[0\]"):
        coop.read_dtd(root)
    path.write_text('{"train": [["a.jpg", 1, "banded"]], "val": [], "test": []}')
    with pytest.raises(ValueError, match=r"missing labels \[0\]"):
        coop.read_dtd(root)
    path.write_text('{"train": []}')
    with pytest.raises(ValueError, match="keys 'train', 'val', 'test'"):
        coop.read_dtd(root)


def test_fgvc_aircraft(tmp_path):
    root = ft.write_fgvc_aircraft(tmp_path, n_train=[2, 3, 4])
    s = coop.read_fgvc_aircraft(root)
    assert s.classnames == ft.FGVC_VARIANTS
    assert [s.train.labels.count(y) for y in range(3)] == [2, 3, 4]
    assert s.templates == ["a photo of a {}, a type of aircraft."]
    assert_rgb(s.val.load(0))
    (root / "fgvc_aircraft" / "variants.txt").unlink()
    with pytest.raises(DatasetLayoutError) as e:
        coop.read_fgvc_aircraft(root)
    assert e.value.missing == [str(root / "fgvc_aircraft" / "variants.txt")]


# ---------------------------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------------------------
def test_imagenet(tmp_path):
    root = ft.write_imagenet(tmp_path, n_train=[3, 4, 5], n_val=2)
    s = coop.read_imagenet(root)
    assert s.classnames == ["tench", "goldfish", "great white shark"]  # sorted wnid order
    assert s.val is None
    assert s.train.labels == [0] * 3 + [1] * 4 + [2] * 5
    assert s.test.labels == [0, 0, 1, 1, 2, 2]
    assert s.train.keys[0] == "imagenet/images/train/n01440764/n01440764_0.JPEG"
    assert s.test.keys[-1].startswith("imagenet/images/val/n01484850/")
    assert s.train.keys == sorted(s.train.keys)
    assert_rgb(s.test.load(3))


def test_imagenet_errors(tmp_path):
    root = ft.write_imagenet(tmp_path)
    names = root / "imagenet" / "classnames.txt"
    names.write_text("n01440764 tench\n")
    with pytest.raises(ValueError, match="n01443537") as e:
        coop.read_imagenet(root)
    assert str(names) in str(e.value)
    ft.write_imagenet(tmp_path)
    shutil.rmtree(root / "imagenet" / "images" / "val" / "n01443537")
    with pytest.raises(ValueError, match=r"only in train: \['n01443537'\]"):
        coop.read_imagenet(root)
    shutil.rmtree(root / "imagenet" / "images" / "val")
    (root / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(DatasetLayoutError) as e:
        coop.read_imagenet(root)
    assert e.value.missing == [str(root / "imagenet/images/val"), str(root / "imagenet/classnames.txt")]


# ---------------------------------------------------------------------------------------------
# CIFAR-100 / CIFAR-100N
# ---------------------------------------------------------------------------------------------
def test_cifar100_in_memory(tmp_path):
    root = ft.write_cifar100(tmp_path, n_train=12, n_test=7)
    s = fulldata.read_cifar100(root)
    assert (len(s.train), len(s.test), s.val) == (12, 7, None)
    assert s.classnames == ["apple", "aquarium fish", "baby", "maple tree", "zebra like"]
    data, labels = ft.cifar_arrays(12, 5, 0)
    assert s.train.labels == labels and s.train.items == list(range(12))
    assert s.train.keys[5] == "cifar-100-python/train/5" and s.test.keys[0] == "cifar-100-python/test/0"
    im = s.train.load(5)
    assert_rgb(im) and im.size == (32, 32)
    # channel-first CIFAR rows become HWC pixels: pixel (r, c) = (R, G, B) at r*32+c of each plane
    planes = data[5].reshape(3, 32, 32)
    assert np.array_equal(np.asarray(im), planes.transpose(1, 2, 0))
    loader = pickle.loads(pickle.dumps(s.train.loader))  # DataLoader workers pickle it
    assert np.array_equal(np.asarray(loader(5)), np.asarray(im))


def test_cifar100_missing_and_bad_pickle(tmp_path):
    root = ft.write_cifar100(tmp_path)
    (root / "cifar-100-python" / "meta").unlink()
    (root / "cifar-100-python" / "test").unlink()
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_cifar100(root)
    assert e.value.missing == [str(root / "cifar-100-python/test"), str(root / "cifar-100-python/meta")]
    ft.write_cifar100(root)
    with open(root / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['fine_labels'\]"):
        fulldata.read_cifar100(root)


@pytest.mark.parametrize("as_tensors,in_cifar_dir", [(False, False), (True, True)])
def test_cifar100n(tmp_path, as_tensors, in_cifar_dir):
    root = ft.write_cifar100n(tmp_path, n_train=12, as_tensors=as_tensors, in_cifar_dir=in_cifar_dir)
    s = fulldata.read_cifar100n(root)
    clean = ft.cifar_arrays(12, 5, 0)[1]
    assert s.train.clean_labels == clean
    assert s.train.labels == [(y + 1) % 5 if i % 3 == 0 else y for i, y in enumerate(clean)]
    assert s.train.keys == fulldata.read_cifar100(root).train.keys  # shares the feature cache with cifar100
    assert len(s.test) == 10 and s.test.clean_labels is None and s.val is None
    assert_rgb(s.train.load(0))


def test_cifar100n_numpy1_pickle_names(tmp_path):
    """The published file was pickled under numpy 1 (numpy.core.multiarray); it must still load."""
    import torch

    path = tmp_path / "h.pt"
    torch.save({"clean_label": np.arange(4), "noisy_label": np.arange(4)[::-1].copy()}, path,
               _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert fulldata.load_cifar100n_labels(path) == ([0, 1, 2, 3], [3, 2, 1, 0])


def test_cifar100n_mismatch_errors(tmp_path):
    root = ft.write_cifar100n(tmp_path / "short", n_train=12, clean_label=[0] * 11, noisy_label=[0] * 11)
    with pytest.raises(ValueError) as e:
        fulldata.read_cifar100n(root)
    msg = str(e.value)
    assert "CIFAR-100_human.pt" in msg and "11 entries" in msg and "12 images" in msg

    clean = ft.cifar_arrays(12, 5, 0)[1]
    clean[7] = (clean[7] + 2) % 5
    root = ft.write_cifar100n(tmp_path / "order", n_train=12, clean_label=clean)
    with pytest.raises(ValueError, match=r"'clean_label' differs .* at 1 positions \(first at index 7") as e:
        fulldata.read_cifar100n(root)
    assert str(root / "CIFAR-100_human.pt") in str(e.value)

    root = ft.write_cifar100n(tmp_path / "range", n_train=12, noisy_label=[0] * 11 + [5])
    with pytest.raises(ValueError, match=r"'noisy_label' has values outside 0\.\.4: \[5\]"):
        fulldata.read_cifar100n(root)

    root = ft.write_cifar100(tmp_path / "none")
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_cifar100n(root)
    assert e.value.missing == [f"{root / 'CIFAR-100_human.pt'} (or {root / 'cifar-100-python/CIFAR-100_human.pt'})"]


# ---------------------------------------------------------------------------------------------
# Animal-10N, WebVision, Food-101N, Clothing1M
# ---------------------------------------------------------------------------------------------
def test_animal10n(tmp_path):
    root = ft.write_animal10n(tmp_path, n_train=2, n_test=1)
    s = fulldata.read_animal10n(root)
    assert s.classnames == ["cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee",
                            "orangutan", "hamster", "guinea pig"]
    assert len(s.train) == 20 and len(s.test) == 10 and s.val is None  # Thumbs.db skipped
    assert s.train.labels == [y for y in range(10) for _ in range(2)]
    assert all(Path(it).name.startswith(f"{y}_") for it, y in zip(s.train.items, s.train.labels))
    assert s.train.keys[0] == "animal10n/training/0_000000.jpg"
    with Image.open(s.train.items[0]) as raw:
        assert raw.mode == "L"
    assert_rgb(s.train.load(0))  # grayscale file, RGB image
    (root / "animal10n" / "testing" / "x_1.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"x_1\.jpg: expected a file name '<label>_<id>\.jpg'"):
        fulldata.read_animal10n(root)
    shutil.rmtree(root / "animal10n" / "testing")
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_animal10n(root)
    assert e.value.missing == [str(root / "animal10n" / "testing")]


def test_webvision(tmp_path):
    root = ft.write_webvision(tmp_path, n_train=2, n_val=1)
    s = fulldata.read_webvision(root)
    assert len(s.classnames) == 50
    assert s.classnames[:3] == ["tench", "goldfish", "great white shark"] and s.classnames[49] == "Nile crocodile"
    assert s.train.labels == [0, 0, 1, 1, 49, 49]  # labels >= 50 dropped
    assert s.test.labels == [0, 1, 49]
    assert s.train.keys[0] == "webvision/google/q0001/00000000.jpg"
    assert s.test.keys[0] == "webvision/val_images_256/val000000.jpg"
    il = s.extra_tests["ilsvrc12"]
    assert il.labels == list(range(50)) and il.keys[3].startswith("webvision/imagenet/val/3/")
    for split in (s.train, s.test, il):
        assert_rgb(split.load(0))
    shutil.rmtree(root / "webvision" / "imagenet" / "val" / "17")
    (root / "webvision" / "info" / "val_filelist.txt").unlink()
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_webvision(root)
    assert e.value.missing == [str(root / "webvision/info/val_filelist.txt"), str(root / "webvision/imagenet/val/17")]
    shutil.rmtree(root / "webvision" / "imagenet")
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_webvision(root)
    assert str(root / "webvision/imagenet/val") in e.value.missing and len(e.value.missing) == 2


@pytest.mark.parametrize("dir_name", ["food-101n", "Food-101N"])
def test_food101n(tmp_path, dir_name):
    root = ft.write_food101n(tmp_path, n_train=2, dir_name=dir_name)
    s = fulldata.read_food101n(root)
    assert s.classnames == ["apple pie", "baby back ribs", "beef tartare"]
    assert s.train.labels == [0, 0, 1, 1, 2, 2]
    assert all(k.startswith(f"{dir_name}/images/{ft.FOOD_CLASSES[y]}/") for k, y in zip(s.train.keys, s.train.labels))
    food = coop.read_food101(root)
    assert s.test.keys == food.test.keys and s.test.labels == food.test.labels
    assert s.templates == food.templates and s.val is None
    assert_rgb(s.train.load(0))


def test_food101n_errors(tmp_path):
    root = ft.write_food101n(tmp_path)
    shutil.rmtree(root / "food-101n" / "images" / "baby_back_ribs")
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_food101n(root)
    assert e.value.missing == [str(root / "food-101n/images/baby_back_ribs")]
    ft.write_image(root / "food-101n" / "images" / "baby_back_ribs" / "x.jpg", (1, 2, 3))
    ft.write_image(root / "food-101n" / "images" / "pizza_slice" / "x.jpg", (1, 2, 3))
    with pytest.raises(ValueError, match=r"\['pizza_slice'\] are not Food-101 classes"):
        fulldata.read_food101n(root)
    shutil.rmtree(root / "food-101n")
    (root / "food-101" / "split_zhou_Food101.json").unlink()
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_food101n(root)
    assert e.value.missing == [
        f"{root / 'food-101n/images'} (or {root / 'Food-101N/images'})",
        str(root / "food-101/split_zhou_Food101.json"),
    ]


def test_clothing1m(tmp_path):
    root = ft.write_clothing1m(tmp_path, n_train=2, n_test=1)
    s = fulldata.read_clothing1m(root)
    assert len(s.classnames) == 14 and s.classnames[8] == "down coat"
    assert len(s.train) == 28 and len(s.test) == 14 and s.val is None
    assert s.train.labels[:4] == [1, 0, 2, 1]  # noisy kv labels
    assert s.test.labels == list(range(14))  # clean kv labels, not the noisy ones of the same keys
    assert s.train.keys[0] == "clothing1m/images/0/00/0_0.jpg"
    assert_rgb(s.test.load(0))
    kv = root / "clothing1m" / "noisy_label_kv.txt"
    kv.write_text("\n".join(kv.read_text().splitlines()[1:]))
    with pytest.raises(ValueError, match=r"1 key\(s\) have no label in .*noisy_label_kv\.txt"):
        fulldata.read_clothing1m(root)
    kv.unlink()
    with pytest.raises(DatasetLayoutError) as e:
        fulldata.read_clothing1m(root)
    assert e.value.missing == [str(kv)]


def test_templates_cover_every_reader():
    assert set(LAYOUTS) <= set(TEMPLATES)
    assert TEMPLATES["dtd"] == ["{} texture."] and TEMPLATES["eurosat"] == ["a centered satellite photo of {}."]
    assert all("{}" in t for ts in TEMPLATES.values() for t in ts)


def test_fake_trees_cover_every_reader():
    assert set(ft.WRITERS) == set(LAYOUTS)
    assert {"imagenet", "cifar100n", "webvision", "food101n"} <= set(DATASETS)


def test_open_rgb_is_the_default_file_loader(tmp_path):
    s = coop.read_dtd(ft.write_dtd(tmp_path))
    assert s.train.loader is open_rgb


# ---------------------------------------------------------------------------------------------
# verify command
# ---------------------------------------------------------------------------------------------
def run_verify(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out=out), out.getvalue()


def test_verify_ok(tmp_path):
    root = ft.write_oxford_pets(tmp_path)
    rc, text = run_verify("verify", "data=oxford_pets", f"paths.data_dir={root}")
    assert rc == 0, text
    assert "train: 15 images, 3 classes" in text and "val: 6 images, 3 classes" in text
    assert "test: 6 images, 3 classes" in text


def test_verify_reports_missing_layout_and_images(tmp_path):
    root = ft.write_food101(tmp_path)
    (root / "food-101" / "images" / "beef_tartare" / "test1.jpg").unlink()
    rc, text = run_verify("verify", "data=food101", f"paths.data_dir={root}")
    assert rc == 1
    assert str(root / "food-101/images/beef_tartare/test1.jpg") in text and "split_zhou_Food101.json" in text
    rc, _ = run_verify("verify", "data=food101", f"paths.data_dir={root}", "check_images=false")
    assert rc == 0
    (root / "food-101" / "split_zhou_Food101.json").unlink()
    rc, text = run_verify("verify", "data=food101", f"paths.data_dir={root}")
    assert rc == 1
    assert str(root / "food-101/split_zhou_Food101.json") in text
    assert "expected layout" in text and "get it from" in text and "DATASETS.md" in text


def test_verify_uses_env_data_root_and_all(tmp_path, monkeypatch):
    root = ft.write_webvision(ft.write_animal10n(tmp_path))
    monkeypatch.setenv("NOISY_PROMPT_DATA", str(root))
    rc, text = run_verify("verify", "data=animal10n")
    assert rc == 0 and "val: none" in text, text
    # the fake WebVision tree lists images for 3 of its 50 classes: a run would score 47 empty classes
    rc, text = run_verify("verify", "data=webvision")
    assert rc == 1 and "split 'train': 47 of 50 classes have no images: 2 (great white shark)" in text
    rc, text = run_verify("verify", "--all")
    assert rc == 1
    assert "ok      animal10n" in text and "MISSING webvision" in text and "MISSING imagenet" in text
    assert str(root / "imagenet" / "classnames.txt") in text


def test_verify_usage_errors(tmp_path):
    assert run_verify("verify", "data=nope")[0] == 2
    assert run_verify("verify", "data=dtd", "color=red")[0] == 2
    assert run_verify("check", "data=dtd")[0] == 2
    assert run_verify("verify")[0] == 2
    assert run_verify("--help")[0] == 0


def test_verify_as_module_writes_nothing_into_cwd(tmp_path):
    root = ft.write_dtd(tmp_path / "data")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "noisy_prompt.data", "verify", "data=dtd", f"paths.data_dir={root}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ok] dtd" in proc.stdout
    assert list(cwd.iterdir()) == []


def _fill_webvision_classes(root: Path) -> None:
    """The fake WebVision tree lists 3 of its 50 classes; give every class one train and one val image."""
    ds = root / "webvision"
    for listing, sub in (("train_filelist_google.txt", "google/fill"), ("val_filelist.txt", "val_images_256")):
        lines = []
        for y in range(50):
            rel = f"{sub}/fill{y:02d}.jpg"
            ft.write_image(ds / rel, (y * 5, 100, 7))
            lines.append(f"{rel if sub.startswith('google') else Path(rel).name} {y}")
        with open(ds / "info" / listing, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


def test_verify_all_on_every_fake_tree(tmp_path):
    for write in ft.WRITERS.values():
        write(tmp_path)
    _fill_webvision_classes(tmp_path)
    rc, text = run_verify("verify", "--all", f"paths.data_dir={tmp_path}")
    assert rc == 0, text
    assert text.count("[ok] ") == len(DATASETS)


def test_relative_data_root_gives_absolute_items_and_same_keys(tmp_path, monkeypatch):
    ft.write_dtd(tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    s = coop.read_dtd("rel")
    assert all(Path(it).is_absolute() for it in s.train.items)
    assert s.train.keys == coop.read_dtd(tmp_path / "rel").train.keys
    with pytest.raises(DatasetLayoutError) as e:
        coop.read_dtd("nowhere")
    assert str(tmp_path / "nowhere" / "dtd" / "images") in e.value.missing


def test_verify_reports_malformed_index_file(tmp_path):
    root = ft.write_clothing1m(tmp_path)
    (root / "clothing1m" / "clean_label_kv.txt").write_text("images/0/00/x.jpg fourteen\n")
    rc, text = run_verify("verify", "data=clothing1m", f"paths.data_dir={root}")
    assert rc == 1 and "clean_label_kv.txt:1" in text and "ValueError" in text
