"""The generic readers `data=folder` and `data=csv`: layouts, splits, class names, clean labels, every bad
input -> one message naming file and line (or folder), `verify` on them, and their configs."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import noisy_prompt.config  # noqa: F401  (resolvers)
from fake_trees import write_image
from noisy_prompt.config import ctor_kwargs
from noisy_prompt.data.base import ImageReadError
from noisy_prompt.data.readers import READERS, read_dataset
from noisy_prompt.data.readers.generic import DatasetContentError, read_csv_dataset, read_folder
from noisy_prompt.data.verify import main as verify_main
from paths import CONF


def tree(root: Path, counts: dict[str, int], sub: str = "", suffix: str = ".png") -> Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / sub / name / f"img{i:03d}{suffix}", (c * 40 % 256, i * 7 % 256, 9))
    return root


def csv_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def rows(folder: str, names: list[str], n: int) -> list[tuple[str, str]]:
    return [(f"{folder}/{name.replace(' ', '_')}/img{i:03d}.png", name) for name in names for i in range(n)]


# ------------------------------------------------------------------------------------------ folder


def test_folder_flat_layout_seeded_split_is_deterministic_and_per_class(tmp_path):
    root = tree(tmp_path / "d", {"golden_retriever": 10, "tabby_cat": 10, "zebra": 5})
    (root / "notes.txt").write_text("not a class")  # stray files at the root are not classes
    (root / "zebra" / "README.md").write_text("not an image")  # nor non-image files inside one
    s = read_folder(folder=str(root))
    assert s.classnames == ["golden retriever", "tabby cat", "zebra"]  # folder names, '_' -> ' ', sorted
    assert len(s.train) + len(s.test) == 25 and s.val is None
    assert sorted(np.bincount(s.test.labels).tolist()) == [1, 2, 2]  # round(0.2 n), at least 1, per class
    assert not set(s.train.items) & set(s.test.items)
    again = read_folder(folder=str(root))
    assert again.test.items == s.test.items and again.train.items == s.train.items
    other = read_folder(folder=str(root), split_seed=1)
    assert other.test.items != s.test.items
    # the split of a class does not depend on the other classes
    tree(root, {"aardvark": 4})
    grown = read_folder(folder=str(root))
    zebra = [it for it in s.test.items if "/zebra/" in it]
    assert zebra == [it for it in grown.test.items if "/zebra/" in it]
    assert all(Path(it).is_absolute() for it in s.train.items)
    assert all(k.startswith(("golden_retriever/", "tabby_cat/", "zebra/")) for k in s.train.keys)


def test_folder_split_folders_are_used_as_given_and_images_may_nest(tmp_path):
    root = tree(tmp_path / "d", {"a": 3, "b": 4}, "train")
    tree(root, {"a": 2, "b": 1}, "test")
    tree(root, {"a": 1}, "val")
    write_image(root / "train" / "b" / "deeper" / "x.jpg", (1, 2, 3))
    s = read_folder(folder=str(root))
    assert (len(s.train), len(s.test), len(s.val)) == (8, 3, 1)
    assert s.train.labels.count(1) == 5 and any(it.endswith("deeper/x.jpg") for it in s.train.items)
    assert s.test.labels == [0, 0, 1]


def test_folder_train_without_test_is_split(tmp_path):
    root = tree(tmp_path / "d", {"a": 5, "b": 5}, "train")
    s = read_folder(folder=str(root), test_fraction=0.4, val_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (4, 2, 4)


def test_folder_classnames_file_orders_and_names_classes(tmp_path):
    root = tree(tmp_path / "d", {"n01": 2, "n02": 2, "n03": 2})
    (root / "classnames.txt").write_text("n03 snow leopard\nn01 tench\nn02\n")
    s = read_folder(folder=str(root))
    assert s.classnames == ["snow leopard", "tench", "n02"]
    assert {Path(it).parent.name for it, y in zip(s.train.items, s.train.labels) if y == 0} == {"n03"}
    (root / "classnames.txt").write_text("n01 tench\n")
    with pytest.raises(DatasetContentError) as e:
        read_folder(folder=str(root))
    assert "folder 'n02' is not listed in" in str(e.value) and "folder 'n03'" in str(e.value)


def test_folder_bad_inputs_are_listed_in_one_message(tmp_path):
    root = tree(tmp_path / "d", {"a": 3, "b": 3}, "train")
    tree(root, {"a": 2, "c": 1}, "test")  # test lacks b, has an unknown c
    (root / "train" / "empty_class").mkdir()
    (root / "train" / "a" / "img000.png").write_bytes(b"")  # an empty file
    with pytest.raises(DatasetContentError) as e:
        read_folder(folder=str(root))
    msg = str(e.value)
    assert msg.startswith(f"data=folder: 5 problem(s) in {root}:")
    assert f"{root / 'train' / 'empty_class'}: class 'empty class' has no image" in msg
    assert f"{root / 'test' / 'b'}: class 'b' has no image (folder missing)" in msg
    assert f"{root / 'test' / 'c'}: not a class" in msg
    assert f"{root / 'test' / 'empty_class'}: class 'empty class' has no image (folder missing)" in msg
    assert f"{root / 'train' / 'a' / 'img000.png'}: empty file" in msg
    assert "python -m noisy_prompt.data verify data=folder" in msg


def test_folder_needs_a_root_and_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="data=folder needs data.root=PATH"):
        read_folder()
    with pytest.raises(DatasetContentError, match="folder not found"):
        read_folder(folder=str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetContentError, match="no class folders"):
        read_folder(folder=str(tmp_path / "flat"))
    tree(tmp_path / "tiny", {"a": 1, "b": 3})
    with pytest.raises(DatasetContentError, match="class 'a' has 1 image"):
        read_folder(folder=str(tmp_path / "tiny"))


# --------------------------------------------------------------------------------------------- csv


def _world(tmp_path: Path) -> Path:
    root = tree(tmp_path / "imgs", {"red_circle": 6, "blue_square": 6, "green_star": 6})
    return root


def test_csv_labels_as_names_with_clean_label_and_test_csv(tmp_path):
    root = _world(tmp_path)
    names = ["red circle", "blue square", "green star"]
    train = [(p, n) for p, n in rows(".", names, 4)]
    lines = ["path,label,clean_label,notes"]
    for i, (p, n) in enumerate(train):
        given = names[(names.index(n) + 1) % 3] if i % 4 == 0 else n  # every 4th label is wrong
        lines.append(f"{p},{given},{n},x")
    csv_file(root / "train.csv", "\n".join(lines) + "\n")
    test = [f"./{n.replace(' ', '_')}/img{i:03d}.png,{n}" for n in names for i in (4, 5)]
    csv_file(root / "test.csv", "path,label\n" + "\n".join(test) + "\n")
    s = read_csv_dataset(train=str(root / "train.csv"), test=str(root / "test.csv"))
    assert s.classnames == ["blue square", "green star", "red circle"]  # sorted names when no classnames file
    assert s.clean_labels_known and s.train.clean_labels is not None
    assert np.mean(np.asarray(s.train.labels) != np.asarray(s.train.clean_labels)) == pytest.approx(0.25)
    assert len(s.test) == 6 and s.test.clean_labels is None and not s.test.origins[0].endswith("train.csv:2")
    assert s.train.origins[0] == f"{root / 'train.csv'}:2"


def test_csv_integer_labels_need_class_names_and_use_classnames_txt(tmp_path):
    root = _world(tmp_path)
    body = "path,label\n" + "\n".join(f"{p},{['red circle', 'blue square', 'green star'].index(n)}"
                                      for p, n in rows(".", ["red circle", "blue square", "green star"], 6)) + "\n"
    csv_file(root / "train.csv", body)
    with pytest.raises(DatasetContentError, match="all labels are integer indices, so the class names are unknown"):
        read_csv_dataset(train=str(root / "train.csv"))
    (root / "classnames.txt").write_text("0 red circle\n1 blue square\n2 green star\n")
    s = read_csv_dataset(train=str(root / "train.csv"))
    assert s.classnames == ["red circle", "blue square", "green star"] and not s.clean_labels_known
    assert {Path(it).parent.name for it, y in zip(s.train.items, s.train.labels) if y == 0} == {"red_circle"}
    assert len(s.train) + len(s.test) == 18 and len(s.test) == 3  # seeded split without a test CSV
    again = read_csv_dataset(train=str(root / "train.csv"))
    assert again.test.items == s.test.items


def test_csv_without_test_scores_the_held_out_part_against_clean_labels(tmp_path):
    root = _world(tmp_path)
    names = ["red circle", "blue square", "green star"]
    body = ["path,label,clean_label"] + [f"{p},{names[0]},{n}" if i % 3 == 0 else f"{p},{n},{n}"
                                         for i, (p, n) in enumerate(rows(".", names, 6))]
    csv_file(root / "t.csv", "\n".join(body) + "\n")
    s = read_csv_dataset(train=str(root / "t.csv"))
    truth = {it: n for (p, n) in rows(".", names, 6) for it in [str((root / p).absolute())]}
    assert all(s.classnames[y] == truth[str(Path(it))] for it, y in zip(s.test.items, s.test.labels))
    assert s.test.clean_labels is None


def test_csv_bad_inputs_name_file_and_line_in_one_message(tmp_path):
    root = _world(tmp_path)
    (root / "broken.png").write_bytes(b"")
    # With a class list, a label outside it is unknown (without one, every label name is a class).
    (root / "classnames.txt").write_text("red_circle red circle\nblue_square blue square\n")
    text = ("path,label\n"
            "red_circle/img000.png,red circle\n"
            "red_circle/nope.png,red circle\n"          # line 3: missing image
            "blue_square/img000.png,purple blob\n"      # line 4: unknown label
            "red_circle/img000.png,red circle\n"        # line 5: duplicate path
            "broken.png,red circle\n"                   # line 6: empty file
            "blue_square/img001.png,9\n")               # line 7: index out of range
    f = csv_file(root / "train.csv", text)
    with pytest.raises(DatasetContentError) as e:
        read_csv_dataset(train=str(f))
    msg = str(e.value)
    assert msg.startswith(f"data=csv: 5 problem(s) in {f}:"), msg
    assert f"{f}:3: image not found: {root / 'red_circle' / 'nope.png'}" in msg
    assert f"{f}:4: unknown label 'purple blob' (known classes: 'red circle', 'blue square'; or an index 0..1)" in msg
    assert "has no image" not in msg  # a consequence of the rejected rows, not a problem of its own
    assert f"{f}:5: duplicate path 'red_circle/img000.png' (also at {f}:2)" in msg
    assert f"{f}:6: empty image file: {root / 'broken.png'}" in msg
    assert f"{f}:7: unknown label '9'" in msg
    assert "python -m noisy_prompt.data verify data=csv data.train=" in msg


def test_csv_empty_missing_column_and_class_without_image(tmp_path):
    root = _world(tmp_path)
    empty = csv_file(root / "empty.csv", "")
    with pytest.raises(DatasetContentError, match=r"empty\.csv: empty CSV \(expected a header"):
        read_csv_dataset(train=str(empty))
    header_only = csv_file(root / "h.csv", "path,label\n\n")
    with pytest.raises(DatasetContentError, match=r"h\.csv: empty CSV \(a header but no rows\)"):
        read_csv_dataset(train=str(header_only))
    nocol = csv_file(root / "n.csv", "file,class\nred_circle/img000.png,red circle\n")
    with pytest.raises(DatasetContentError, match=r"n\.csv:1: missing column\(s\) 'path', 'label'; the header has "
                                                  r"\['file', 'class'\]"):
        read_csv_dataset(train=str(nocol))
    (root / "classnames.txt").write_text("red_circle red circle\nblue_square blue square\n")
    one = csv_file(root / "one.csv", "path,label\nred_circle/img000.png,red_circle\nred_circle/img001.png,red circle\n")
    with pytest.raises(DatasetContentError, match=r"one\.csv: class 'blue square' has no image"):
        read_csv_dataset(train=str(one), test=str(one))
    with pytest.raises(DatasetContentError, match="file not found"):
        read_csv_dataset(train=str(root / "absent.csv"))
    with pytest.raises(ValueError, match="data=csv needs data.train=FILE"):
        read_csv_dataset()


def test_unreadable_image_at_run_time_names_the_csv_line(tmp_path):
    root = _world(tmp_path)
    (root / "red_circle" / "img001.png").write_bytes(b"not a png at all")
    names = ["red circle", "blue square", "green star"]
    f = csv_file(root / "train.csv", "path,label\n" + "\n".join(f"{p},{n}" for p, n in rows(".", names, 6)) + "\n")
    s = read_csv_dataset(train=str(f))
    s.named("csv")
    bad = next(i for i, it in enumerate(s.train.items) if it.endswith("red_circle/img001.png"))
    with pytest.raises(ImageReadError, match=rf"image is unreadable or truncated .*img001\.png \(listed at {f}:3\)"):
        s.train.load(bad)
    # The same error met in a DataLoader worker (as during a run) reaches the run as the same user error with
    # the same message (torch re-raises a worker's exception from its text), advising verify with the CSV.
    import torch
    from torch.utils.data import DataLoader

    from noisy_prompt.errors import UserError

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(s.train)

        def __getitem__(self, i):
            s.train.load(i)
            return i

    with pytest.raises(ImageReadError) as err:
        list(DataLoader(Images(), batch_size=4, num_workers=1))
    text = str(err.value)
    assert isinstance(err.value, UserError) and text.startswith("dataset 'csv', split 'train': image is unreadable")
    assert f"img001.png (listed at {f}:3)" in text and "Traceback" not in text and "worker" not in text
    assert text.endswith(f"`python -m noisy_prompt.data verify data=csv data.train={f}`."), text
    out = io.StringIO()
    rc = verify_main(["verify", "data=csv", f"data.train={f}"], out=out)
    assert rc == 1 and f"(listed at {f}:3)" in out.getvalue() and "1 image file(s) are empty or do not open" in out.getvalue()


# ---------------------------------------------------------------------------------- seam, verify, config


def test_registered_in_the_reader_table_and_read_through_read_dataset(tmp_path):
    assert {"folder", "csv"} <= set(READERS)
    root = tree(tmp_path / "d", {"a": 5, "b": 5})
    s = read_dataset("folder", None, folder=str(root))
    assert s.templates == ["a photo of a {}."] and s.class_descriptions is None and not s.clean_labels_known


def test_verify_ok_and_failing(tmp_path):
    root = tree(tmp_path / "d", {"a_b": 5, "c": 5})
    out = io.StringIO()
    assert verify_main(["verify", "data=folder", f"data.root={root}"], out=out) == 0
    assert f"[ok] folder data.root={root}: 2 classes" in out.getvalue() and "train: 8 images, 2 classes" in out.getvalue()
    (root / "empty").mkdir()
    out = io.StringIO()
    assert verify_main(["verify", "data=folder", f"data.root={root}"], out=out) == 1
    assert "[FAIL] folder: data=folder: 1 problem(s)" in out.getvalue() and "class 'empty' has no image" in out.getvalue()
    out = io.StringIO()
    assert verify_main(["verify", "data=csv", f"data.root={root}"], out=out) == 2  # not an option of data=csv
    assert "unknown option(s) ['data.root']" in out.getvalue()


@pytest.mark.parametrize("data", ["folder", "csv"])
def test_configs_default_to_real_noise_and_pass_options_to_the_reader(data):
    opts = ["data.root=/x/y"] if data == "folder" else ["data.train=/x/t.csv", "data.test=/x/s.csv"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"data={data}", "model=coop", "backbone=vit_b16", *opts])
        sym = compose(config_name="run", overrides=[f"data={data}", "noise=sym40", "backbone=vit_b16", *opts])
    assert cfg.noise.name == "real" and sym.noise.name == "sym40"
    kw = ctor_kwargs(cfg, "data")
    assert not {"root", "train", "test", "split", "classnames"} & set(kw)
    assert kw["reader"] == data and kw["shots"] is None and kw["val_from"] == "test"
    rk = kw["reader_kwargs"]
    if data == "folder":
        assert rk == {"folder": "/x/y", "classnames": None, "test_fraction": 0.2, "val_fraction": 0.0, "split_seed": 0}
    else:
        assert (rk["train"], rk["test"], rk["val"]) == ("/x/t.csv", "/x/s.csv", None)


def test_datamodule_declares_whether_clean_labels_are_known(tmp_path, tiny_backbone):
    from noisy_prompt.data.datamodule import CLIPDataModule
    from noisy_prompt.noise import NoiseSpec

    root = tree(tmp_path / "d", {"a": 5, "b": 5})
    names = ["a", "b"]
    f = csv_file(root / "t.csv", "path,label,clean_label\n" + "\n".join(f"{p},{n},{n}" for p, n in rows(".", names, 5)))

    def dm(reader, kwargs, noise):
        m = CLIPDataModule(name=reader, reader=reader, reader_kwargs=kwargs, noise=noise, backbone=tiny_backbone,
                           input="images", cache_dir=str(tmp_path / "cache"))
        m.setup("fit")
        return m

    real = NoiseSpec(name="real", protocol="real", rate=0.0)
    assert dm("csv", {"train": str(f)}, real).clean_labels_known
    assert not dm("folder", {"folder": str(root)}, real).clean_labels_known
    sym = dm("folder", {"folder": str(root)}, NoiseSpec(name="sym40", protocol="sym", rate=0.4, exclude_true=True))
    assert sym.clean_labels_known and sym.noise_summary()["realised_rate"] > 0


# ------------------------------------------------------------------------------ label files pinned


def _run_cfg(overrides: list[str], backbone: dict, root: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=[
            "model=zeroshot", f"backbone.model={backbone['model']}", "backbone.name=tiny", "data.real_images=false",
            "logger=none", "callbacks=none", "figures=false", "data.num_workers=0", f"paths.log_dir={root / 'logs'}",
            f"paths.cache_dir={root / 'cache'}", *overrides])


def test_an_edited_csv_label_makes_the_finished_cell_refuse_reuse_naming_the_file(tmp_path, tiny_backbone):
    """A real (zero-shot, nothing trained) run on a CSV dataset, then one label edited in place: the same
    command refuses to hand back the stored result and names the CSV with both hashes."""
    from noisy_prompt.cell import StaleCellError
    from noisy_prompt.data.label_files import sha256_file
    from noisy_prompt.task import run_cell

    root = tree(tmp_path / "d", {"a": 6, "b": 6})
    listed = rows(".", ["a", "b"], 6)
    train = csv_file(root / "train.csv", "path,label\n" + "".join(f"{p},{n}\n" for p, n in listed if p[-5] < "4"))
    test = csv_file(root / "test.csv", "path,label\n" + "".join(f"{p},{n}\n" for p, n in listed if p[-5] >= "4"))
    cfg = _run_cfg(["data=csv", f"data.train={train}", f"data.test={test}"], tiny_backbone, tmp_path)
    run_dir = Path(cfg.run_dir)
    first = run_cell(cfg, run_dir)
    assert first["status"] == "ok"
    before = sha256_file(train)
    assert first["label_files"] == {str(train): before, str(test): sha256_file(test)}
    assert run_cell(cfg, run_dir)["wall_time_s"] == first["wall_time_s"]  # unchanged labels: the result is reused
    train.write_text(train.read_text().replace("img000.png,a", "img000.png,b", 1))  # one label flipped, same name
    with pytest.raises(StaleCellError) as err:
        run_cell(cfg, run_dir)
    text = str(err.value)
    assert f"label file {train}: sha256 {before} -> {sha256_file(train)}" in text, text
    assert str(test) not in text and "force=true" in text


def test_a_folder_datasets_class_names_file_is_pinned_and_its_classes_name_their_folders(tmp_path):
    from noisy_prompt.data.label_files import label_file_hashes, sha256_file
    from noisy_prompt.data.readers import data_digest

    root = tree(tmp_path / "d", {"a": 4, "b": 4})
    assert label_file_hashes("folder", None, folder=str(root)) is None  # the folder names are the labels
    digest = data_digest("folder", None, folder=str(root))
    names = csv_file(root / "classnames.txt", "a apple\nb banana\n")
    assert label_file_hashes("folder", None, folder=str(root)) == {str(names): sha256_file(names)}
    assert data_digest("folder", None, folder=str(root)) != digest
    (root / "b" / "img000.png").rename(root / "a" / "img100.png")  # an image moved to another class folder
    assert data_digest("folder", None, folder=str(root)) not in (digest, None)
    s = read_folder(folder=str(root))
    assert s.train.class_sources == [str(root / "a"), str(root / "b")]
    assert s.test.class_sources == s.train.class_sources


def test_a_bad_dataset_stops_a_run_as_a_user_error_listed_with_the_other_problems(tmp_path):
    """The readers' errors are UserErrors: `python -m noisy_prompt.run` prints them alone (no traceback), and
    the preflight lists them with the run's other problems."""
    from noisy_prompt.errors import ConfigError, PreflightError, UserError
    from noisy_prompt.preflight import preflight

    root = tree(tmp_path / "d", {"cat": 3, "dog": 3})
    bad = csv_file(root / "labels.csv", "path,label\ncat/img000.png,cat\ncat/img009.png,cat\ndog/img000.png,wolf\n")
    csv_file(root / "classnames.txt", "cat\ndog\n")

    def cfg(*extra):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="run", overrides=["model=coop", "backbone=synthetic", "data.real_images=false",
                                                         "data=csv", f"paths.log_dir={tmp_path}", *extra])

    with pytest.raises(DatasetContentError) as err:
        preflight(cfg(f"data.train={bad}"))
    assert isinstance(err.value, UserError) and f"{bad}:3: image not found" in str(err.value)
    with pytest.raises(PreflightError) as err:
        preflight(cfg(f"data.train={bad}", "model.optim.lr=-1"))
    text = str(err.value)
    assert text.startswith("2 problems stop this run before it starts (config, dataset)"), text
    assert f"2. [dataset] data=csv: 2 problem(s) in {bad}:" in text and f"     - {bad}:4: unknown label 'wolf'" in text
    with pytest.raises(ConfigError, match="data=csv needs data.train=FILE"):
        preflight(cfg())
