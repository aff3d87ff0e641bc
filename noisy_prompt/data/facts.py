"""What the data publishes to a method, declared once.

A method never asks which dataset it trains on and never probes the datamodule for an attribute: the
task hands it the `DataFacts` of its data at construction (beside the class names), and while it fits it
reaches the data only through the `DataSource` protocol below. A dataset publishes its own facts through
its reader (`DatasetSplits.superclass_of`, `.description_aliases`, the training split's clean labels);
the datamodule adds those of the run (the noise protocol, whether validation is the test split) in
`CLIPDataModule.facts()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable


@dataclass(frozen=True)
class DataFacts:
    """The facts of a run's data that change what a method does. The defaults describe data that publishes
    nothing: labels that are their own truth, no separate test-as-validation, no noise protocol."""

    # The training set's `clean_label` is ground truth, so clean/noisy verdicts can be scored: the dataset
    # ships true labels (CIFAR-100N, a CSV with a clean_label column) or a synthetic protocol corrupted
    # labels taken as clean. False for real noise without annotation (Animal-10N, a folder of images).
    clean_labels_known: bool = True
    # Validation evaluates the test split (data.val_from=test): the per-epoch curve is a test curve.
    val_is_test: bool = False
    # The noise protocol of the training labels (noise.protocol: sym, asym, inst, ptnl, real, ...);
    # "clean" when no noise is applied. Methods with a "real noise" setting (DeFT, DivideMix) read it.
    noise_protocol: str = "clean"
    # Fine class -> superclass index (CIFAR-100's 20 coarse classes, read from its pickles); None elsewhere.
    superclass_of: tuple[int, ...] | None = None
    # Class name (normalised: lower case, `_` = space) -> the key public description files use for it,
    # for names those files phrase differently (Caltech-101, ImageNet); empty elsewhere.
    description_aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        # Own copies in plain types (a tuple, a dict): the facts pickle with the module (ddp_spawn) and a
        # caller's list or dict changed later does not change them.
        if self.superclass_of is not None:
            object.__setattr__(self, "superclass_of", tuple(int(s) for s in self.superclass_of))
        object.__setattr__(self, "description_aliases", {str(k): str(v) for k, v in
                                                         dict(self.description_aliases or {}).items()})
        object.__setattr__(self, "clean_labels_known", bool(self.clean_labels_known))
        object.__setattr__(self, "val_is_test", bool(self.val_is_test))
        object.__setattr__(self, "noise_protocol", str(self.noise_protocol or "clean"))

    def differences(self, other: "DataFacts") -> list[str]:
        """`name: mine != theirs` for every field that differs (for an error message)."""
        return [f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


@runtime_checkable
class DataSource(Protocol):
    """What a method may ask of the data it is fitted with (the trainer's datamodule), beyond its facts.

    `CLIPDataModule` implements it; a method reaches it through `ClassifierModule.data_source()`.
    Methods only, so that an isinstance check never evaluates a property before the data is set up.
    """

    def facts(self) -> DataFacts:
        """The data's facts (what the module was built with)."""

    def set_epoch(self, epoch: int) -> None:
        """Before each training epoch: the epoch's augmented view and batch order."""

    def train_eval_dataloader(self) -> Iterable[dict]:
        """The training set once, un-augmented, with `x`, `label`, `clean_label` and `index` per batch."""

    def test_dataloader(self) -> Any:
        """The test loaders (the first is the dataset's test split)."""

    def train_paths(self) -> list[str | None] | None:
        """The training images' files in training-set order; None when the images are not files."""

    def num_train(self) -> int:
        """The number of training samples."""
