"""Per-item transforms on uint8 tensors: normalisation for evaluation, DARTS-style augmentation for training.

Two families, chosen by the network layout (:func:`make_transforms`): the CIFAR one (pad-crop, flip,
Cutout, optional AutoAugment) on square images, whose pixel lengths (crop padding, Cutout side) are
given at CIFAR's 32x32 and scaled with the input side; and the ImageNet one (random resized crop,
flip, colour jitter; resize and centre crop for evaluation) on images of any size.
"""

from __future__ import annotations

import math
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


# ------------------------------------------------------------------------------------------ any size
class ToSquare:
    """A decoded image of any size -> ``size x size``: shorter side resized (antialiased), centre crop.

    What the in-memory path does once at load time for odd-sized images, done per item for streamed
    ones; then ``then`` (the CIFAR-style augmentation or normalisation) runs on the square.
    """

    def __init__(self, size: int, then: EvalTransform) -> None:
        self.size, self.then = int(size), then

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if tuple(img.shape[-2:]) != (self.size, self.size):
            import torchvision.transforms.v2.functional as TF

            img = TF.center_crop(TF.resize(img, [self.size], antialias=True), [self.size, self.size])
        return self.then(img, gen)


def _random_resized_box(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator | None
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of torchvision's ``RandomResizedCrop.get_params``, drawn from ``gen``.

    Up to 10 tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``;
    then the centre crop at the nearest admissible ratio (torchvision's fallback). Drawn from ``gen``
    rather than the global RNG so that items follow the loader's seeds.
    """
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        r = torch.rand(4, generator=gen).tolist()
        target = area * (scale[0] + r[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_r[0] + r[1] * (log_r[1] - log_r[0]))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(r[2] * (h - ch + 1)), int(r[3] * (w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _adjust_hue_pil(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Shift the hue of a uint8 RGB tensor by ``factor`` turns (in [-0.5, 0.5]) through PIL's HSV.

    What torchvision's ``ColorJitter`` does on the PIL images of the DARTS ImageNet pipeline [C]
    (the H channel as uint8, shifted modulo 256); about twice as fast as the float tensor version,
    which dominated the augmentation's time (``benchmarks/bench_stream_loader.py``).
    """
    import numpy as np
    from PIL import Image

    hsv = Image.fromarray(img.permute(1, 2, 0).numpy()).convert("HSV")
    h, s, v = hsv.split()
    shifted = np.asarray(h, dtype=np.uint8) + np.uint8(round(factor * 255) % 256)  # wraps around
    rgb = Image.merge("HSV", (Image.fromarray(shifted, "L"), s, v)).convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


class ImageNetTrainTransform(EvalTransform):
    """The ImageNet training augmentation of DARTS / PC-DARTS [C], on uint8 tensors of any size.

    ``RandomResizedCrop(size, scale=(crop_scale_min, 1), ratio=(3/4, 4/3))`` -> horizontal flip ->
    ``ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue)`` -> normalisation
    (the ImageNet mean and std for ``imagenet``). torchvision's functional ops do the pixel work (the
    hue through PIL, as in DARTS' PIL pipeline); the random draws come from the per-call generator
    (reproducible for any ``num_workers``). The jitter factors are applied in a fixed order
    (torchvision permutes it per image) [D].
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale_min: float = 0.08,
        jitter: float = 0.4,
        hue: float = 0.2,
    ) -> None:
        super().__init__(mean, std)
        self.size, self.scale = int(size), (float(crop_scale_min), 1.0)
        self.ratio = (3.0 / 4.0, 4.0 / 3.0)  # [C] torchvision's default, used by DARTS
        self.jitter, self.hue = float(jitter), float(hue)

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        _, h, w = img.shape
        top, left, ch, cw = _random_resized_box(h, w, self.scale, self.ratio, gen)
        img = TF.resized_crop(img, top, left, ch, cw, [self.size, self.size], antialias=True)
        r = torch.rand(5, generator=gen).tolist()
        if r[0] < 0.5:
            img = img.flip(-1)
        j = self.jitter
        if j > 0:
            img = TF.adjust_brightness(img, 1 - j + 2 * j * r[1])
            img = TF.adjust_contrast(img, 1 - j + 2 * j * r[2])
            img = TF.adjust_saturation(img, 1 - j + 2 * j * r[3])
        if self.hue > 0:
            img = _adjust_hue_pil(img, self.hue * (2 * r[4] - 1))
        return super().__call__(img)


class ImageNetEvalTransform(EvalTransform):
    """Resize the shorter side to ``size / crop`` (256 for 224), centre-crop ``size``, normalise [C]."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], crop: float = 0.875) -> None:
        super().__init__(mean, std)
        self.size, self.resize = int(size), max(int(size), round(size / crop))

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        img = TF.center_crop(TF.resize(img, [self.resize], antialias=True), [self.size, self.size])
        return super().__call__(img)


#: Augmentation families, chosen by the network layout (:mod:`bnas.networks`): ``cifar`` pads, crops and
#: flips (DARTS CIFAR); ``imagenet`` takes random resized crops with colour jitter (DARTS ImageNet).
TRANSFORM_KINDS = ("cifar", "imagenet")


def make_transforms(
    kind: str,
    info: DatasetInfo,
    image_size: int,
    streamed: bool,
    *,
    cutout: int = 0,
    autoaugment: bool = False,
    crop_scale_min: float = 0.08,
    jitter: float = 0.4,
    hue: float = 0.2,
    eval_crop: float = 0.875,
) -> tuple[EvalTransform | ToSquare, EvalTransform | ToSquare]:
    """(train, eval) per-item transforms of a run.

    ``streamed`` items arrive at their native size; in-memory ones are already ``image_size`` squares
    (resized at load time), so the ImageNet evaluation there is normalisation alone (the centre crop
    happened at load time, at crop fraction 1) and the CIFAR transforms are exactly the existing ones.
    """
    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"unknown transform family {kind!r}; valid: {', '.join(TRANSFORM_KINDS)}")
    if kind == "imagenet":
        train = ImageNetTrainTransform(image_size, info.mean, info.std, crop_scale_min, jitter, hue)
        if streamed:
            return train, ImageNetEvalTransform(image_size, info.mean, info.std, eval_crop)
        return train, EvalTransform(info.mean, info.std)
    cifar_train = TrainTransform.for_size(info, image_size, cutout=cutout, autoaugment=autoaugment)
    cifar_eval = EvalTransform(info.mean, info.std)
    if streamed:
        return ToSquare(image_size, cifar_train), ToSquare(image_size, cifar_eval)
    return cifar_train, cifar_eval
