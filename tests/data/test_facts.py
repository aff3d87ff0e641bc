"""What the data publishes (noisy_prompt/data/facts.py): DataFacts built per reader, the CIFAR-100 superclass
map read from the pickles' coarse labels, the readers' description aliases, the loaders' declared facts, and
methods that read their facts from their constructor rather than from the datamodule."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

import fake_trees as ft
from noisy_prompt.data.base import CallableLoader, ImageLoader, ImageSplit, as_loader, open_rgb
from noisy_prompt.data.datamodule import CLIPDataModule, pixels32
from noisy_prompt.data.facts import DataFacts, DataSource
from noisy_prompt.data.image_cache import CachedImages
from noisy_prompt.data.readers import read_dataset
from noisy_prompt.data.readers.cifar100_classes import CIFAR100_FINE_NAMES, CIFAR100_SUPERCLASS
from noisy_prompt.data.readers.fulldata import ArrayImageLoader
from noisy_prompt.noise import NoiseSpec

SYNTHETIC = {"num_train_per_class": 4, "num_val_per_class": 1, "num_test_per_class": 1}


def _dm(name, root=None, noise=None, **kw) -> CLIPDataModule:
    dm = CLIPDataModule(name, str(root) if root else None, noise=noise, seed=1, **kw)
    dm.setup_labels()  # the label side is all the facts need: no CLIP, no features
    return dm


def _write_cifar(root: Path, names: list[str], coarse_of: list[int] | None, per_class: int = 2) -> Path:
    """cifar-100-python/{train,test,meta} with the given classes; `coarse_labels` from coarse_of (None: absent)."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for part, offset in (("train", 0), ("test", 1)):
        data, labels = ft.cifar_arrays(per_class * len(names), len(names), offset)
        obj = {"data": data, "fine_labels": labels}
        if coarse_of is not None:
            obj["coarse_labels"] = [coarse_of[y] for y in labels]
        (d / part).write_bytes(pickle.dumps(obj, protocol=2))
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": names}, protocol=2))
    return root


# ------------------------------------------------------------------------------------ DataFacts per reader


def test_defaults_describe_data_that_publishes_nothing():
    f = DataFacts()
    assert (f.clean_labels_known, f.val_is_test, f.noise_protocol, f.superclass_of, f.description_aliases) == \
        (True, False, "clean", None, {})
    with pytest.raises(AttributeError):
        f.val_is_test = True  # frozen
    given = [0, 0, 1]
    g = DataFacts(superclass_of=given, description_aliases={"a": "b"})
    given[0] = 5
    assert g.superclass_of == (0, 0, 1) and g == DataFacts(superclass_of=(0, 0, 1), description_aliases={"a": "b"})
    assert g.differences(DataFacts()) == ["superclass_of: (0, 0, 1) != None", "description_aliases: {'a': 'b'} != {}"]


def test_synthetic_facts_follow_the_run():
    sym = _dm("synthetic", noise=NoiseSpec(name="sym50", protocol="sym", rate=0.5), reader_kwargs=SYNTHETIC,
              val_from="test")
    assert sym.facts() == DataFacts(clean_labels_known=True, val_is_test=True, noise_protocol="sym")
    real = _dm("synthetic", noise=NoiseSpec(name="real", protocol="real"), reader_kwargs=SYNTHETIC)
    # real noise without annotation: the served clean labels are the given ones, not the truth
    assert real.facts() == DataFacts(clean_labels_known=False, noise_protocol="real")
    assert _dm("synthetic", reader_kwargs=SYNTHETIC).facts() == DataFacts()
    assert isinstance(sym, DataSource)
    with pytest.raises(RuntimeError, match="setup_labels"):
        CLIPDataModule("synthetic").facts()


def test_cifar_reader_publishes_superclasses_from_the_coarse_labels(tmp_path):
    root = ft.write_cifar100(tmp_path / "a")  # fake_trees: coarse = fine // 2
    assert read_dataset("cifar100", root).superclass_of == [0, 0, 1, 1, 2]
    facts = _dm("cifar100", root).facts()
    assert facts.superclass_of == (0, 0, 1, 1, 2) and facts.description_aliases == {}
    n = _dm("cifar100n", ft.write_cifar100n(tmp_path / "n"), noise=NoiseSpec(name="real", protocol="real")).facts()
    assert n.superclass_of == (0, 0, 1, 1, 2) and n.clean_labels_known and n.noise_protocol == "real"
    # Not CIFAR-100's classes and no coarse labels: no superclasses to publish
    assert read_dataset("cifar100", _write_cifar(tmp_path / "b", ["x", "y"], None)).superclass_of is None


def test_cifar_superclasses_agree_with_the_published_listing(tmp_path):
    names = list(CIFAR100_FINE_NAMES)
    from_pickle = read_dataset("cifar100", _write_cifar(tmp_path / "a", names, list(CIFAR100_SUPERCLASS), 1))
    assert from_pickle.superclass_of == list(CIFAR100_SUPERCLASS)
    # CIFAR-100's classes without coarse labels: the published listing is the fallback
    assert read_dataset("cifar100", _write_cifar(tmp_path / "b", names, None, 1)).superclass_of == list(CIFAR100_SUPERCLASS)
    swapped = list(CIFAR100_SUPERCLASS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match=r"train: coarse_labels disagree .* 2 classes \(apple, aquarium fish\)"):
        read_dataset("cifar100", _write_cifar(tmp_path / "c", names, swapped, 1))


def test_cifar_coarse_labels_must_name_one_superclass_per_class(tmp_path):
    root = ft.write_cifar100(tmp_path)
    path = root / "cifar-100-python" / "test"
    obj = pickle.loads(path.read_bytes())
    obj["coarse_labels"] = [0 for _ in obj["coarse_labels"]]
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=r"cifar-100-python/test: class \d+ \(.*\) has coarse labels \d and 0"):
        read_dataset("cifar100", root)


def test_superclass_noise_uses_the_published_map(tmp_path):
    # coarse labels {0, 1, 2} | {3, 4}: superclass noise moves 0->1->2->0 and 3<->4, whatever the names
    root = _write_cifar(tmp_path, ["p", "q", "r", "s", "t"], [0, 0, 0, 1, 1], per_class=40)
    spec = NoiseSpec(name="asym40_superclass", protocol="asym", rate=0.4, asym_variant="superclass")
    dm = _dm("cifar100", root, noise=spec)
    moved = dm.train_labels != dm.train_clean
    successor = np.array([1, 2, 0, 4, 3])
    assert 0.2 < moved.mean() < 0.6 and np.array_equal(dm.train_labels[moved], successor[dm.train_clean[moved]])
    with pytest.raises(ValueError, match="superclass map.*publishes none"):
        _dm("dtd", ft.write_dtd(tmp_path / "dtd"), noise=spec)


def test_readers_carry_their_description_aliases(tmp_path):
    assert read_dataset("caltech101", ft.write_caltech101(tmp_path / "c")).description_aliases["face"] == "off-center face"
    assert read_dataset("imagenet", ft.write_imagenet(tmp_path / "i")).description_aliases == \
        {"projectile": "missile", "sunglass": "sunglasses"}
    assert read_dataset("dtd", ft.write_dtd(tmp_path / "d")).description_aliases == {}
    assert _dm("caltech101", tmp_path / "c", shots=1).facts().description_aliases["snoopy"] == "snoopy (cartoon beagle)"


# ------------------------------------------------------------------------------------------- loaders


def test_loaders_declare_their_facts_with_defaults(tmp_path):
    assert open_rgb.source is None and open_rgb.content_digest is None and open_rgb.pixels32([0]) is None
    split = ImageSplit(items=[0, 1], labels=[0, 1], classnames=["a", "b"], loader=lambda i: None)
    assert isinstance(split.loader, CallableLoader) and split.loader.content_digest is None
    assert split.identity(0) == "0"

    class Digested:  # a user's loader object that is not an ImageLoader but publishes a digest
        content_digest = "abc"

        def __call__(self, i):
            return None

    assert as_loader(Digested()).content_digest == "abc" and as_loader(open_rgb) is open_rgb
    with pytest.raises(TypeError, match="callable"):
        as_loader(3)
    syn = read_dataset("synthetic", None, **SYNTHETIC)
    assert syn.train.identity(0).endswith("|" + syn.train.loader.content_digest)  # the world's code, as before


def test_array_loader_reads_pixels_directly_and_the_cache_keeps_its_facts(tmp_path):
    root = ft.write_cifar100(tmp_path)
    train = read_dataset("cifar100", root).train
    assert isinstance(train.loader, ArrayImageLoader) and train.loader.source.endswith("train")
    sub = train.subset([3, 1, 7])
    direct = pixels32(sub)
    opened = np.stack([np.asarray(sub.load(i), dtype=np.float32).reshape(-1) for i in range(3)])
    assert direct.shape == (3, 3072) and np.array_equal(direct, opened)
    cached = CachedImages(sub.loader, sub.items)
    assert isinstance(cached, ImageLoader) and cached.source == sub.loader.source
    assert np.array_equal(cached.pixels32(sub.items), direct)


# ------------------------------------------------------------------------------------------- methods


def test_a_method_reads_its_facts_from_its_constructor(tiny_backbone):
    from noisy_prompt.methods.baselines.deft import DeFT
    from noisy_prompt.methods.dpsep import DPSEP

    common = dict(backbone=tiny_backbone, classnames=["cat", "dog", "bird"], templates=["a photo of a {}."])
    told = DPSEP(n_ctx=2, facts=DataFacts(val_is_test=True), **common)
    assert told._trainer is None and told.validation_is_test()  # no trainer, no datamodule: the facts alone
    assert not DPSEP(n_ctx=2, **common).validation_is_test()
    deft = dict(input="images", max_epochs=3, phase1={"epochs": 1})
    real = DeFT(**deft, facts=DataFacts(noise_protocol="real", clean_labels_known=False), **common)
    assert real.warmup_epochs == 5 and real._real("sce") and real.known_true(np.arange(3)) is None
    sym = DeFT(**deft, facts=DataFacts(noise_protocol="sym"), **common)
    assert sym.warmup_epochs == 1 and not sym._real("sce") and sym.known_true(np.arange(3)) is not None
    assert "facts" not in told.hparams  # an object, not a hyperparameter: checkpoints keep primitives


def test_a_method_built_for_other_data_refuses_to_run_on_it(tiny_backbone):
    from noisy_prompt.methods.dpsep import DPSEP

    dm = _dm("synthetic", noise=NoiseSpec(name="sym50", protocol="sym", rate=0.5), reader_kwargs=SYNTHETIC)
    common = dict(backbone=tiny_backbone, classnames=list(dm.classnames), n_ctx=2)

    class _Trainer:
        datamodule = dm

    ok = DPSEP(facts=dm.facts(), **common)
    ok._trainer = _Trainer()
    ok.setup("fit")
    assert ok.data_source() is dm
    wrong = DPSEP(facts=DataFacts(val_is_test=True, noise_protocol="sym"), **common)
    wrong._trainer = _Trainer()
    with pytest.raises(ValueError, match=r"other data .*val_is_test: True != False"):
        wrong.setup("fit")
    library = DPSEP(**common)  # built without facts (library use): takes its datamodule's when fitted
    library._trainer = _Trainer()
    library.setup("fit")
    assert library.facts == dm.facts()
