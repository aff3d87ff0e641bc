"""Image features from a frozen image encoder, cached on disk.

With a frozen encoder, one augmented view per image per epoch is exactly as good as augmenting on the
fly, and the same views can serve every seed, noise setting and method of a sweep. The cache is keyed
per image by its identity (`ImageSplit.identity`: the stable key plus, for a file, its resolved path,
size and modification time), so a new few-shot draw only computes the images it has not seen, and a
file that changed in place, went missing or lives under another data root is never served from an
entry made for another file (a missing file raises ImageReadError naming dataset, split and path).
Augmentation draws are seeded per (aug_seed, view, image key), independent of which other images are
requested, of batch order and of worker count.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from noisy_prompt import atomic
from noisy_prompt.data.base import ImageSplit

log = logging.getLogger(__name__)


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _ViewDataset(Dataset):
    def __init__(self, split: ImageSplit, rows: Sequence[int], transform, view: int, aug_seed: int | None):
        self.split, self.rows, self.transform, self.view, self.aug_seed = split, list(rows), transform, view, aug_seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        row = self.rows[i]
        image = self.split.load(row)
        if self.aug_seed is None:
            return self.transform(image)
        # fork_rng keeps the caller's global RNG untouched when this runs in the main process. The transforms
        # draw from the CPU generator only, so only it is seeded: torch.manual_seed would also seed every
        # accelerator's generators and costs ~0.2 ms per call (a tenth of a world image's whole pass).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_stable_int(self.aug_seed, self.view, self.split.keys[row]))
            return self.transform(image)


class FeatureCache:
    def __init__(self, cache_dir: str | Path | None, backbone_identity: str):
        self.dir = Path(cache_dir) / "features" if cache_dir else None
        self.backbone_identity = backbone_identity

    @property
    def stored_dtype(self) -> str:
        """The precision features come back in: float16-rounded when cached on disk (they are stored as
        half), full float32 without a cache dir. A predictor replays it to give the run's own numbers."""
        return "float16" if self.dir is not None else "float32"

    def _path(self, *key_parts: object) -> Path | None:
        if self.dir is None:
            return None
        digest = hashlib.sha256("|".join(map(str, (self.backbone_identity, *key_parts))).encode()).hexdigest()[:24]
        return self.dir / f"{digest}.pt"

    def features(
        self,
        split: ImageSplit,
        *,
        dataset: str,
        split_name: str,
        transform,
        transform_id: str,
        encode: Callable[[torch.Tensor], torch.Tensor],
        view: int = 0,
        aug_seed: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        desc: str = "",
    ) -> torch.Tensor:
        """Features (len(split), D) in float32, row i for split item i."""
        path = self._path(dataset, split_name, transform_id, view, aug_seed)
        # Identities first: a missing file fails here, before any cached entry could stand in for it.
        ids = [split.identity(i) for i in range(len(split))]
        stored: dict[str, torch.Tensor] = {}
        if path is not None and path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            stored = dict(zip(blob["keys"], blob["feats"]))
        missing = [i for i, k in enumerate(ids) if k not in stored]
        if missing:
            ds = _ViewDataset(split, missing, transform, view, aug_seed)
            # own generator: iterating a DataLoader otherwise draws a worker seed from the global RNG
            loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                generator=torch.Generator().manual_seed(0))
            out = []
            with torch.no_grad():
                for x in tqdm(loader, desc=desc or f"features {dataset}/{split_name} view {view}", leave=False,
                              disable=len(missing) < 2 * batch_size):
                    out.append(encode(x.to(device)).float().cpu())
            new = torch.cat(out)
            for i, f in zip(missing, new):
                stored[ids[i]] = f.half() if path is not None else f
            if path is not None:
                keys = list(stored)
                # atomic: concurrent ranks/jobs never see a half-written file
                atomic.torch_save({"keys": keys, "feats": torch.stack([stored[k] for k in keys]).half()}, path)
        return torch.stack([stored[k] for k in ids]).float()
