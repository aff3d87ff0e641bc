"""The world probe (`python -m noisy_prompt.tools.probe`): its scale factor is the config key
backbone.logit_scale_factor (no in-memory patch), its field change stays in its own process and folder."""
from __future__ import annotations

import math

import pytest
import torch

from noisy_prompt.synthetic import world
from noisy_prompt.tools import probe


def test_logit_scale_factor_multiplies_the_scale_and_refuses_nonsense():
    from noisy_prompt.clip.factory import create_clip
    from noisy_prompt.errors import ConfigError

    base = create_clip("builtin:synthetic-clip")
    half = create_clip("builtin:synthetic-clip", logit_scale_factor=0.5)
    assert half.logit_scale == pytest.approx(0.5 * base.logit_scale, rel=1e-5)
    assert half.identity == base.identity  # image features (and their cache) do not depend on it
    x = torch.zeros(1, 3, base.image_size, base.image_size)
    with torch.no_grad():
        torch.testing.assert_close(half.model.encode_image(x), base.model.encode_image(x))
    for bad in (0, -1.0, math.inf, math.nan, "fast"):
        with pytest.raises(ConfigError, match="backbone.logit_scale_factor"):
            create_clip("builtin:synthetic-clip", logit_scale_factor=bad)


def test_a_scale_factor_is_a_setting_with_its_own_run_dir_and_hash(tmp_path):
    from hydra import compose, initialize_config_dir

    import noisy_prompt.config  # noqa: F401  (resolvers)
    from noisy_prompt.config import config_hash
    from noisy_prompt.sweep import CONF_DIR

    common = ["model=coop", "noise=sym50", f"paths.log_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plain = compose(config_name="run", overrides=common, return_hydra_config=True)
        scaled = compose(config_name="run", overrides=[*common, *probe.scale_overrides(0.3)], return_hydra_config=True)
    assert probe.scale_overrides(1.0) == []  # the preset: same run dir and hash as without the probe
    assert "logit_scale_factor" not in plain.backbone  # no key in the preset: its records keep their hash
    assert scaled.backbone.logit_scale_factor == 0.3
    assert config_hash(plain) != config_hash(scaled)
    assert str(scaled.run_dir) != str(plain.run_dir) and "logit_scale_factor=0.3" in str(scaled.run_dir)


def test_probe_field_changes_only_its_own_process_and_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(world, "FIELD_RANGES", dict(world.FIELD_RANGES))
    field = probe.parse_field('{"tint": [0.8, 1.3]}')
    assert field == {"tint": (0.8, 1.3)}
    # every field change has its own folder: a probe never shares cell dirs or cached features with the world as committed
    tags = {probe.probe_tag({}), probe.probe_tag(field), probe.probe_tag({"tint": (0.8, 1.4)})}
    assert len(tags) == 3 and probe.probe_tag(field) == probe.probe_tag(dict(field))
    probe.apply_field(field)
    assert world.FIELD_RANGES["tint"] == (0.8, 1.3)
    for bad, msg in [('{"glow": [1, 2]}', "unknown condition 'glow'"), ('{"tint": [2, 1]}', "low <= high"),
                     ("[1, 2]", "unknown condition"), ("{tint", "not JSON")]:
        with pytest.raises(SystemExit, match=msg):
            probe.parse_field(bad)
    for bad in (0.0, -2.0, math.inf):
        with pytest.raises(SystemExit, match="--scale-factor"):
            probe.scale_overrides(bad)
    with pytest.raises(SystemExit, match="one cell per call"):
        probe.main(["--root", str(tmp_path), "--", "-m", "model=coop"])
    with pytest.raises(SystemExit, match="set by probe"):
        probe.main(["--root", str(tmp_path), "--", "model=coop", f"paths.log_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="as --scale-factor"):
        probe.main(["--root", str(tmp_path), "--", "+backbone.logit_scale_factor=0.3"])


def test_fit_line_prints_the_recorded_fit():
    line = probe.fit_line({"metrics": {"test/acc": 70.0, "train_fit/noisy": 0.25, "train/loss_final": 2.3}})
    assert line == "train/loss_final 2.3000, train_fit/noisy 0.2500"
    assert "no train_fit" in probe.fit_line({"metrics": {"test/acc": 70.0}})
