"""Zero-shot CLIP with the dataset's templates (averaged). Evaluated through `trainer.test`: nothing trains."""
from __future__ import annotations

import torch

from noisy_prompt.methods.base import ClassifierModule


class ZeroShot(ClassifierModule):
    trains = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._text: torch.Tensor | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self._text is None or self._text.device != x.device:
            self._text = self.template_text_features().to(x.device)
        return self.logit_scale * self.image_features(x) @ self._text.t()
