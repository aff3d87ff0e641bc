"""The benchmarks run end to end in their CPU smoke modes (numbers are not checked, only that every
section is produced and is self-consistent)."""
import re

import pytest

from noisy_prompt.bench import gpu as bench_gpu
from noisy_prompt.bench import prompt as bench


def test_class_names_subset_is_a_prefix_of_the_full_draw():
    # bench prompt restates the C=S measurement for C > S on this very property
    assert bench.class_names(1000)[:102] == bench.class_names(102)
    assert len({len(n.split()) for n in bench.class_names(50)}) > 1  # names of different lengths


def test_rescale_keeps_fixed_image_time():
    m = bench.Measure(step_s=3.0, mem_mb=10.0, memory_kind="x", cpu_s=2.0)
    r = {"C": 10, "S": 10, "t_img": 1.0, "c_img": 0.5, "paths": {"dassl": m, "prefix": m}}
    out = bench.rescale(r, 100)
    assert out["paths"]["dassl"].step_s == pytest.approx(1.0 + 2.0 * 10)
    assert out["paths"]["dassl"].cpu_s == pytest.approx(0.5 + 1.5 * 10)
    assert out["paths"]["prefix"].step_s == pytest.approx(30.0)
    assert out["paths"]["prefix"].mem_mb == pytest.approx(100.0)


def test_interpolation_in_classes():
    pts = {37: 1.0, 102: 2.0, 1000: 11.0}
    assert bench_gpu._interp(pts, 37) == pytest.approx(1.0)
    assert bench_gpu._interp(pts, 551) == pytest.approx(6.5)
    assert bench_gpu._interp(pts, 2000) == pytest.approx(22.0)  # proportional above the last point
    assert bench_gpu._interp(pts, 10) == pytest.approx(1.0)  # no extrapolation of the slope below
    assert bench_gpu._interp({4: 1.0, 8: 0.9}, 1000) > 0  # a noisy decreasing pair cannot go negative


@pytest.mark.slow
def test_prompt_bench_cpu_smoke(capsys):
    bench.main(["--backbones", "synthetic", "--classes", "4", "8", "--subset", "4", "--steps", "1",
                "--warmup", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("synthetic ")]
    assert len(rows) == 4, out  # two rows in the wall table, two in the CPU-time table
    assert "C=8 run on a subset of S=4 classes" in out
    assert all(re.search(r"\d+\.\d+x\s+\d+\.\d+x$", r) for r in rows), rows
    assert "[process CPU seconds per step]" in out and "[wall seconds per step]" in out


@pytest.mark.slow
def test_gpu_bench_tiny_cpu_smoke(capsys):
    bench_gpu.main(["--device", "cpu", "--tiny"])
    out = capsys.readouterr().out
    for section in ("[1] DP-SEP training step", "[2] TANGO training step", "[3] blocked k-NN", "[4] DP-SEP Table 1"):
        assert section in out, out
    assert re.search(r"total \d+\.\d+ GPU-hours", out)
    assert re.search(r"images/s", out)


def test_amp_step_is_one_optimiser_step_of_the_given_loss():
    """The benchmarks' shared step: at precision 32 one SGD step (to float rounding) on compute_loss(*args); under
    bf16 autocast (CPU) the same step up to bf16 rounding; the gradient is cleared before each step."""
    import torch

    for precision, tol in (("32", 1e-6), ("bf16-mixed", 1e-2)):
        w = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([w], lr=0.1)
        step = bench.amp_step(opt, torch.device("cpu"), precision, lambda x, c: (w * x).sum() * c)
        x = torch.tensor([1.0, 2.0, 3.0])
        step(x, 1.0)
        torch.testing.assert_close(w.detach(), torch.ones(3) - 0.1 * x, rtol=0, atol=tol)
        step(x, 2.0)  # a second step's gradient is 2x, not accumulated onto the first
        torch.testing.assert_close(w.detach(), torch.ones(3) - 0.3 * x, rtol=0, atol=tol)


def test_bench_package_has_no_import_circle():
    """Every benchmark module may import the shared helpers (`prompt`), and `prompt` imports no benchmark."""
    import ast
    from pathlib import Path

    import noisy_prompt.bench as pkg

    folder = Path(pkg.__file__).parent
    imports = {}
    for f in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("noisy_prompt.bench"):
                names.update(f"{node.module}.{a.name}" if node.module == "noisy_prompt.bench" else node.module
                             for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("noisy_prompt.bench"))
        imports[f.stem] = {n.rsplit(".", 1)[-1] for n in names}
    assert imports["prompt"] <= set(), imports["prompt"]
    for stem, names in imports.items():
        if stem not in ("__init__", "__main__"):
            assert names <= {"prompt"}, (stem, names)
    assert {"prompt", "gpu", "loader", "tango", "cell"} <= set(imports)


def test_bench_dispatch_names_every_benchmark(capsys):
    from noisy_prompt import bench as pkg

    with pytest.raises(SystemExit) as err:
        pkg.main(["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in out for name in ("prompt", "gpu", "loader", "tango", "cell"))


@pytest.mark.slow
def test_loader_bench_smoke(capsys):
    from noisy_prompt.bench import loader

    r = loader.main(["--smoke"])
    out = capsys.readouterr().out
    assert r["images_s"] > 0 and r["limit_images_s"] > 0 and r["n"] == 24
    assert r["workers"] >= 1  # auto for a GPU run: never 0
    assert "loader / limit:" in out and "decode limit" in out


@pytest.mark.slow
def test_tango_bench_smoke(capsys):
    from noisy_prompt.bench import tango

    r = tango.main(["--smoke"])
    e = r["epoch"]
    assert set(r["step_s"]) == {"plain", "tango", "plain_2B"} and all(v > 0 for v in r["step_s"].values())
    assert e["tango"] == pytest.approx(e["tango_train"] + e["feature_pass"] + e["purify"])
    assert "x plain" in capsys.readouterr().out
