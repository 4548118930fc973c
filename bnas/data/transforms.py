"""Per-item transforms on uint8 tensors: normalisation for evaluation, DARTS-style augmentation for training.

Pixel lengths (crop padding, Cutout side) are given at CIFAR's 32x32 and scaled with the input side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bnas.data.sources import NATIVE_CIFAR_SIZE, DatasetInfo

# [C] DARTS pads 4 px (random crop) and cuts 16 px holes at 32x32; both scale with the input side.
CROP_PADDING_AT_32 = 4


def _scaled(pixels_at_32: int, image_size: int) -> int:
    """A pixel length given for 32x32 inputs, scaled to ``image_size``; at least 1 unless it is 0."""
    return 0 if pixels_at_32 <= 0 else max(1, round(pixels_at_32 * image_size / NATIVE_CIFAR_SIZE))


class EvalTransform:
    """uint8 C x H x W -> normalised float32. Evaluation does nothing else."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # Folding the 1/255 into the constants saves one pass over the image.
        self.mean255 = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.std255 = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        # Out of place first: the input may be a view of the shared, cached image tensor.
        return (img.float() - self.mean255).div_(self.std255)


class TrainTransform(EvalTransform):
    """Training augmentation on uint8 tensors, seeded through the generator passed per call.

    Order as in the DARTS family: random crop with zero padding, horizontal flip, optional AutoAugment
    (CIFAR-10 policy, on uint8), normalisation, optional Cutout (one square hole zeroed after
    normalisation; DARTS semantics: centre uniform over the image, the hole clipped at the border).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int = CROP_PADDING_AT_32,
        flip: bool = True,
        cutout: int = 0,
        autoaugment: bool = False,
    ) -> None:
        super().__init__(mean, std)
        self.padding, self.flip, self.cutout = int(padding), bool(flip), int(cutout)
        self.autoaugment = None
        if autoaugment:
            from torchvision.transforms import AutoAugment, AutoAugmentPolicy

            self.autoaugment = AutoAugment(AutoAugmentPolicy.CIFAR10)

    @classmethod
    def for_size(
        cls, info: DatasetInfo, image_size: int, cutout: int = 0, autoaugment: bool = False
    ) -> TrainTransform:
        """The standard augmentation; the 32x32 pixel lengths (padding 4, ``cutout``) scaled to the size."""
        return cls(
            info.mean,
            info.std,
            padding=_scaled(CROP_PADDING_AT_32, image_size),
            cutout=_scaled(cutout, image_size),
            autoaugment=autoaugment,
        )

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        _, h, w = img.shape
        # One draw per item for crop offsets, flip and the cutout centre (cheap on a slow CPU).
        r = torch.rand(5, generator=gen).tolist()
        p = self.padding
        if p:
            top, left = int(r[0] * (2 * p + 1)), int(r[1] * (2 * p + 1))
            img = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
        if self.flip and r[2] < 0.5:
            img = img.flip(-1)
        if self.autoaugment is not None:
            # AutoAugment draws from the global RNG; fork it so the result follows ``gen`` and the
            # caller's global random state is left untouched.
            aa_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(aa_seed)
                img = self.autoaugment(img.contiguous())
        x = super().__call__(img)
        if self.cutout:
            cy, cx, half = int(r[3] * h), int(r[4] * w), self.cutout // 2
            x[:, max(0, cy - half) : min(h, cy + half), max(0, cx - half) : min(w, cx + half)] = 0.0
        return x
