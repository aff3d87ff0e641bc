"""The synthetic world's digest follows its code and keys the feature cache."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision import transforms

import fake_trees as ft
from paths import CONF
import noisy_prompt.config  # noqa: F401  (resolvers)
from noisy_prompt.cell import (CellId, CellLockedError, StaleCellError, cell_lock, finished_result, parse_settings,
                               read_record, settings_tag, write_json)
from noisy_prompt.config import config_hash, result_config
from noisy_prompt.data.base import EmptyClassError, ImageReadError
from noisy_prompt.data.facts import DataFacts
from noisy_prompt.data.features import FeatureCache
from noisy_prompt.data.readers import coop



def _compose(overrides, hydra_node=True):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides), return_hydra_config=hydra_node)


def test_the_worlds_digest_follows_its_code_and_keys_the_feature_cache(tmp_path):
    from noisy_prompt.data.readers import data_digest
    from noisy_prompt.synthetic import dataset as syn

    here = Path(syn.__file__).parent
    for name in syn._WORLD_SOURCES:
        (tmp_path / name).write_bytes((here / name).read_bytes())
    assert syn.sources_digest(tmp_path) == syn.world_digest() == data_digest("synthetic")
    # an edit nobody bumped RENDER_VERSION for (a field-condition range) changes the digest ...
    world = tmp_path / "world.py"
    world.write_text(world.read_text() + '\nFIELD_RANGES["tint"] = (0.6, 1.3)\n')
    assert syn.sources_digest(tmp_path) != syn.world_digest()
    # ... and every image's cache identity carries the digest, so old features are not served; its key
    # (which also seeds its augmentations) does not, so augmented views stay what they were
    split = syn.synthetic_split("train", 1, "field")
    assert split.identity(0) == f"{split.keys[0]}|{syn.world_digest()}"
    assert syn.world_digest() not in split.keys[0]
    assert data_digest("cifar100") is None  # real data on disk publishes none
    with pytest.raises(KeyError, match="unknown dataset"):
        data_digest("no_such_dataset")


def test_the_worlds_digest_ignores_whole_line_comments_and_blank_lines_only(tmp_path):
    import io
    import tokenize

    from noisy_prompt.synthetic import dataset as syn

    here = Path(syn.__file__).parent
    for name in syn._WORLD_SOURCES:
        (tmp_path / name).write_bytes((here / name).read_bytes())
    world = tmp_path / "world.py"
    text = world.read_text()
    # a reworded comment and an extra blank line: the world is the same, so is its digest
    world.write_text("# a new comment\n\n" + text.replace("\n# ", "\n    # reworded: ", 1))
    assert syn.sources_digest(tmp_path) == syn.world_digest()
    # a trailing comment and a docstring edit count (the line holds code), as does any code edit
    world.write_text(text.replace("\nDEFAULT_WORLD = 2\n", "\nDEFAULT_WORLD = 2  # why\n"))
    assert syn.sources_digest(tmp_path) != syn.world_digest()
    world.write_text(text.replace("\nDEFAULT_WORLD = 2\n", "\nDEFAULT_WORLD  = 2\n"))
    assert syn.sources_digest(tmp_path) != syn.world_digest()
    # no line inside a string of these modules starts with `#` (code_lines would drop it)
    for name in syn._WORLD_SOURCES:
        source = (here / name).read_text()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING:
                inner = tok.string.splitlines()[1:]
                assert not any(line.lstrip().startswith("#") for line in inner), (name, tok.start)
