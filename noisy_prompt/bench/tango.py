"""`python -m noisy_prompt.bench tango`: TANGO's training epoch against a plain CE fine-tuning epoch.

On ViT-B/16 with random weights (timings do not depend on the weights), on CPU, with a small batch:
- plain: the project's `ft_ce` step (vision tower + linear head, cross-entropy, SGD), batch B;
- tango: the project's `Tango.training_step` (TAC over the anchors, Mixup, L_clean on the clean samples of
  the batch + L_reg on the mixed batch, one forward over both) with the same optimiser, batch B;
- plain at batch 2B: the same CE step on as many images as TANGO's forward carries (clean + mixed), which
  separates "TANGO's extras" (TAC, Mixup, the losses) from "TANGO's second batch of images";
- the purification feature pass: the no-grad eval-mode forward, per image;
- the purification itself at CIFAR-100 scale (`purify`: blocked k-NN vote, both anchor graphs, labels) on
  N = 50,000 features of dimension 512, C = 100 classes x 40 anchors, k = 200, measured at that N.

The epochs at N images are then the measured per-step and per-image times multiplied by the step and image
counts (N/B steps; N feature-pass images; one purification): arithmetic on measured times, stated as such.
Steps are timed interleaved (plain, tango, plain 2B, ...; medians) so a shared machine's load hits all alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from noisy_prompt.bench import prompt as common


def _modules(backbone: str, classes: int, anchors_k: int, batch: int, clean_fraction: float):
    from noisy_prompt.methods.ft_ce import FineTuneCE
    from noisy_prompt.methods.tango.module import PurifiedLabels, Tango

    names = common.class_names(classes)
    bundle = common.build_clip(backbone)
    # One template sentence per class through the text tower (setup only), then K random unit anchors per
    # class in their place: the step's cost depends on |A| = K*C, not on the anchors' values, and encoding
    # 4,000 sentences with ViT-B/16's text tower on one CPU thread would take minutes before any timing.
    tango = Tango(backbone=common.BACKBONES[backbone], classnames=names, clip_bundle=bundle, max_epochs=1,
                  anchors={"source": "templates", "k": 1}).train()
    from noisy_prompt.methods.tango.tac import class_anchor_table

    gen_a = torch.Generator().manual_seed(1)
    labels = torch.arange(classes).repeat_interleave(anchors_k)
    tango.anchors = torch.nn.functional.normalize(torch.randn(len(labels), tango.anchors.shape[1], generator=gen_a), dim=-1)
    tango.anchor_labels = labels
    tango.anchor_index, tango.anchor_mask = class_anchor_table(labels, classes)
    bundle_ce = common.build_clip(backbone)
    plain = FineTuneCE(backbone=common.BACKBONES[backbone], classnames=names, clip_bundle=bundle_ce, max_epochs=1,
                       input="images").train()
    gen = torch.Generator().manual_seed(0)
    n = 4 * batch
    given = torch.randint(0, classes, (n,), generator=gen)
    soft = torch.softmax(torch.randn(n, classes, generator=gen), dim=1)
    tango.purified = PurifiedLabels(epoch=0, given=given, true=None,
                                    clean_mask=torch.rand(n, generator=gen) < clean_fraction, soft_labels=soft,
                                    q_given=torch.ones(n))
    size = tango.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(2 * batch, 3, size, size, generator=gen)
    return tango, plain, images, given


def _step(module, lr: float = 5e-4):
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    return common.amp_step(opt, torch.device("cpu"), "32", lambda batch: module.training_step(batch, 0))


def measure(backbone: str, classes: int, anchors_k: int, batch: int, steps: int, clean_fraction: float,
            knn_n: int, knn_d: int, knn_classes: int, knn_k: int) -> dict:
    import warnings

    from noisy_prompt.methods.tango.purification import purify

    warnings.filterwarnings("ignore", message=".*self.log.*")  # modules stepped without a trainer
    tango, plain, images, given = _modules(backbone, classes, anchors_k, batch, clean_fraction)
    batch_b = {"x": images[:batch], "label": given[:batch], "index": torch.arange(batch)}
    batch_2b = {"x": images, "label": given[: 2 * batch], "index": torch.arange(2 * batch)}
    step_tango, step_plain = _step(tango), _step(plain)
    runs = {"plain": lambda: step_plain(batch_b), "tango": lambda: step_tango(batch_b),
            "plain_2B": lambda: step_plain(batch_2b)}
    for fn in runs.values():  # warm-up: allocator, first-call paths
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    # purification's feature pass: eval mode, no grad, per image (as Tango.extract_features)
    tango.eval()
    fwd = []
    with torch.no_grad():
        tango.image_features(images[:batch])
        for _ in range(steps):
            t0 = time.perf_counter()
            tango.image_features(images[:batch])
            fwd.append((time.perf_counter() - t0) / batch)
    tango.train()
    # purify() at CIFAR-100 scale, measured at that N
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(knn_n, knn_d, generator=gen), dim=-1)
    labels = torch.randint(0, knn_classes, (knn_n,), generator=gen)
    anchors = torch.nn.functional.normalize(torch.randn(knn_classes * 40, knn_d, generator=gen), dim=-1)
    anchor_labels = torch.arange(knn_classes).repeat_interleave(40)
    t0 = time.perf_counter()
    purify(feats, labels, anchors, anchor_labels, knn_classes, k=min(knn_k, knn_n - 1), block_size=4096)
    t_purify = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"step_s": med, "fwd_per_image_s": statistics.median(fwd), "purify_s": t_purify, "batch": batch,
            "steps": steps, "knn": (knn_n, knn_d, knn_classes, min(knn_k, knn_n - 1))}


def epoch_table(r: dict, n_images: int) -> dict:
    b = r["batch"]
    steps = n_images / b
    plain = steps * r["step_s"]["plain"]
    tango_train = steps * r["step_s"]["tango"]
    feature_pass = n_images * r["fwd_per_image_s"]
    tango = tango_train + feature_pass + r["purify_s"]
    return {"plain": plain, "tango_train": tango_train, "feature_pass": feature_pass, "purify": r["purify_s"],
            "tango": tango, "ratio": tango / plain,
            "second_batch": steps * (r["step_s"]["plain_2B"] - r["step_s"]["plain"]),
            "extras": steps * (r["step_s"]["tango"] - r["step_s"]["plain_2B"])}


def main(argv: list[str] | None = None, prog: str = "python -m noisy_prompt.bench tango") -> dict:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_b16", choices=sorted(common.BACKBONES))
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per kind (interleaved; medians)")
    p.add_argument("--clean-fraction", type=float, default=0.5, help="share of the batch in I_c")
    p.add_argument("--n", type=int, default=50000, help="training images per epoch (CIFAR-100: 50,000)")
    p.add_argument("--knn-n", type=int, default=None, help="features of the purification (default: --n)")
    p.add_argument("--smoke", action="store_true", help="seconds: synthetic CLIP, 8 classes, N = 2,000")
    args = p.parse_args(argv)
    anchors_k, knn_d = 40, 512
    if args.smoke:
        args.backbone, args.classes, args.batch_size, args.steps, args.n = "synthetic", 8, 4, 1, 2000
        anchors_k, knn_d = 4, 64
    knn_n = args.knn_n or args.n
    print(f"device=cpu torch threads={torch.get_num_threads()} backbone={args.backbone} (random init"
          f"{'' if args.backbone != 'synthetic' else ': the built-in weights'}) classes={args.classes} "
          f"batch={args.batch_size}", flush=True)
    r = measure(args.backbone, args.classes, anchors_k, args.batch_size, args.steps, args.clean_fraction,
                knn_n, knn_d, args.classes, 200)
    e = epoch_table(r, args.n)
    s = r["step_s"]
    print(f"per step (median of {r['steps']}, interleaved): plain CE {s['plain']:.3f} s | TANGO {s['tango']:.3f} s "
          f"| plain CE at batch {2 * r['batch']} {s['plain_2B']:.3f} s")
    print(f"purification feature pass {r['fwd_per_image_s'] * 1000:.1f} ms/image (eval, no grad); purify() at "
          f"N={r['knn'][0]} x D={r['knn'][1]}, C={r['knn'][2]} x 40 anchors, k={r['knn'][3]}: {r['purify_s']:.2f} s")
    print(f"epoch of N={args.n} images (measured per-step/per-image times x counts):")
    print(f"  plain CE                         {e['plain']:10.0f} s")
    print(f"  TANGO                            {e['tango']:10.0f} s  = {e['ratio']:.2f}x plain")
    print(f"    of which the mixed batch (2B forward/backward instead of B) {e['second_batch']:10.0f} s")
    print(f"    TAC + Mixup + losses (TANGO step minus plain step at 2B)   {e['extras']:10.0f} s")
    print(f"    purification feature pass                                   {e['feature_pass']:10.0f} s")
    print(f"    purify() (k-NN, graphs, labels)                             {e['purify']:10.1f} s", flush=True)
    return {**r, "epoch": e}
