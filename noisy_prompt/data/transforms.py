"""Image transforms derived from the backbone (size, normalisation), as CoOp/PTNL use them."""
from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T


def train_transform(size: int, mean: Sequence[float], std: Sequence[float], crop_scale: Sequence[float] = (0.08, 1.0), flip: bool = True):
    ops = [T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BICUBIC)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def test_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def describe(transform) -> str:
    """A string that changes whenever the transform would produce different pixels (feature-cache key)."""
    return repr(transform).replace("\n", "")
