"""The dataset held on the accelerator and augmented there in batches: a drop-in for the CPU loaders.

On a GPU the per-image CPU augmentation of :class:`~bnas.data.loaders.ImageTensorDataset` (one Python
call per image, then a host-to-device copy per batch) is slower than the network step it feeds.
:class:`DeviceLoader` keeps the run's uint8 images ``(N, C, H, W)`` on the device (CIFAR-10 at 32 px:
3 KiB an image, 150 MiB for all 50,000) and builds each batch there: a gather of the batch's images,
then the training augmentation of :class:`~bnas.data.transforms.TrainTransform` done for the whole
batch at once (:class:`DeviceAugment`): random crop with zero padding, horizontal flip, normalisation,
Cutout (DARTS semantics: centre uniform over the image, hole clipped at the border, zeroed after
normalisation). Evaluation normalises only. AutoAugment stays on the CPU path.

Randomness and the loader contract. Like the CPU loader it has a ``generator`` (the order of a pass:
``randperm(n)``) and a ``dataset`` with ``reseed(seed)`` (the augmentation stream), so
:func:`bnas.data.reseed_loader` reseeds it unchanged and a resumed run repeats an uninterrupted one.
Both generators are CPU generators: a pass draws its order and one row of 5 uniforms per image
(crop top, crop left, flip, Cutout row, Cutout column -- the CPU transform's layout) at its start,
so the same seeds give the same batches on every device (up to the device's float arithmetic in the
normalisation), not the CPU loader's batches (different draws). A pass that is not reseeded continues
both streams (the sub-network loader), and ``len()`` and capping by the consumer work as with a
``DataLoader`` (``drop_last=False``).

Nothing here imports :mod:`bnas.config`; :class:`DataPlacement` carries the two settings
(``runtime.data_on_device``, ``runtime.data_device_fraction``) that decide where the data goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bnas.data.transforms import EvalTransform, TrainTransform
from bnas.errors import ConfigError

#: Uniforms drawn per image: crop top, crop left, flip, Cutout centre row, Cutout centre column.
DRAWS_PER_IMAGE = 5


@dataclass(frozen=True)
class DataPlacement:
    """Where a run's images live: ``mode`` is ``runtime.data_on_device`` (``auto``, ``on``/True,
    ``off``/False); ``max_fraction`` is ``runtime.data_device_fraction``."""

    mode: str | bool = "off"
    max_fraction: float = 0.25

    def on_device(self, device: torch.device | str | None, nbytes: int, autoaugment: bool = False) -> bool:
        """True when the images (``nbytes`` of uint8) go to ``device``.

        ``on`` always (the CPU too: tests); ``off`` never; ``auto`` on a CUDA device when they take at
        most ``max_fraction`` of its free memory and AutoAugment (CPU only) is off. ``on`` with
        AutoAugment raises :class:`~bnas.errors.ConfigError`.
        """
        mode = {True: "on", False: "off"}.get(self.mode, self.mode)  # type: ignore[call-overload]
        if mode == "on" and autoaugment:
            raise ConfigError(
                "on cannot be combined with retrain.autoaugment: true (AutoAugment runs on the CPU "
                "loader only); use auto or off",
                key="runtime.data_on_device",
            )
        if mode != "auto":
            return mode == "on"
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type != "cuda" or autoaugment:
            return False
        free, _total = torch.cuda.mem_get_info(dev)
        return nbytes <= self.max_fraction * free


class DeviceAugment:
    """The batched form of :class:`~bnas.data.transforms.TrainTransform` (or of ``EvalTransform``).

    ``augment(x, r)``: ``x`` uint8 ``(B, C, H, W)``, ``r`` ``(B, 5)`` uniforms in [0, 1) on the same
    device (None: no augmentation, normalisation only). Per image ``b``, with padding ``p``:
    ``top = floor(r0 (2p+1))``, ``left = floor(r1 (2p+1))`` index the zero-padded image, the crop is
    mirrored when ``r2 < 0.5``, and the Cutout hole of side ``s`` covers rows
    ``[floor(r3 H) - s/2, floor(r3 H) + s/2)`` and the columns likewise, clipped at the border.
    Returns float32 ``(x - 255 mean) / (255 std)`` with the hole set to 0.
    """

    def __init__(
        self,
        mean255: torch.Tensor,
        std255: torch.Tensor,
        padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
    ) -> None:
        self.mean255 = mean255.reshape(1, -1, 1, 1).float()
        self.std255 = std255.reshape(1, -1, 1, 1).float()
        self.padding, self.flip, self.cutout = int(padding), bool(flip), int(cutout)

    @classmethod
    def like(cls, transform: EvalTransform) -> DeviceAugment:
        """The batched equivalent of a CPU transform (a ``TrainTransform`` without AutoAugment, or an
        ``EvalTransform``)."""
        if isinstance(transform, TrainTransform):
            if transform.autoaugment is not None:
                raise ConfigError(
                    "AutoAugment runs on the CPU loader only; use data_on_device auto or off",
                    key="runtime.data_on_device",
                )
            t = transform
            return cls(t.mean255, t.std255, t.padding, t.flip, t.cutout)
        return cls(transform.mean255, transform.std255)

    @property
    def random(self) -> bool:
        """True when the transform draws random numbers (crop, flip or Cutout)."""
        return bool(self.padding or self.flip or self.cutout)

    def to(self, device: torch.device | str) -> DeviceAugment:
        mean, std = self.mean255.to(device), self.std255.to(device)
        return DeviceAugment(mean, std, self.padding, self.flip, self.cutout)

    def __call__(self, x: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        dev = x.device
        if r is not None and (self.padding or self.flip):
            ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
            span = 2 * self.padding + 1
            # clamp: a float32 r just below 1 times span may round up to span itself.
            top = (r[:, 0] * span).long().clamp_(max=span - 1)
            left = (r[:, 1] * span).long().clamp_(max=span - 1)
            rows = top[:, None] + ys[None]  # (B, H), in padded coordinates
            cols = xs[None].expand(b, w)
            if self.flip:  # crop, then mirror: output column j reads crop column w-1-j
                cols = torch.where((r[:, 2] < 0.5)[:, None], (w - 1 - xs)[None], cols)
            cols = left[:, None] + cols
            if self.padding:
                x = F.pad(x, (self.padding,) * 4)
            x = x.gather(2, rows[:, None, :, None].expand(b, c, h, x.shape[3]))
            x = x.gather(3, cols[:, None, None, :].expand(b, c, h, w))
        out = (x.float() - self.mean255).div_(self.std255)
        if r is not None and self.cutout:
            half = self.cutout // 2
            cy = (r[:, 3] * h).long().clamp_(max=h - 1)[:, None]
            cx = (r[:, 4] * w).long().clamp_(max=w - 1)[:, None]
            ys, xs = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
            in_rows = (ys >= cy - half) & (ys < cy + half)  # (B, H)
            in_cols = (xs >= cx - half) & (xs < cx + half)  # (B, W)
            out = out.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)
        return out


class DeviceDataset:
    """The images and labels a loader uses, copied to ``device`` once, with the augmentation stream.

    ``images[indices]`` (uint8) and ``labels[indices]`` are copied, so only the images of the split
    occupy device memory. ``reseed(seed)`` restarts the augmentation stream (a CPU generator).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        transform: DeviceAugment,
        device: torch.device | str,
        seed: int = 0,
    ) -> None:
        indices = indices.to(torch.int64).cpu()
        self.device = torch.device(device)
        self.images = images[indices].to(self.device)
        self.labels = labels[indices].to(torch.int64).to(self.device)
        self.transform = transform.to(self.device)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        return len(self.labels)

    def draws(self, n: int) -> torch.Tensor | None:
        """One pass's augmentation uniforms ``(n, 5)`` on the device (None when nothing is random)."""
        if not self.transform.random:
            return None
        return torch.rand(n, DRAWS_PER_IMAGE, generator=self.generator).to(self.device, non_blocking=True)


class DeviceLoader:
    """Batches ``(x, y)`` of a :class:`DeviceDataset`, built on its device (see the module docstring).

    ``generator`` orders a shuffled pass (``randperm``); :func:`bnas.data.reseed_loader` reseeds it and
    the dataset's augmentation stream. ``drop_last`` is False, like the CPU loaders.
    """

    def __init__(self, dataset: DeviceDataset, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds, n, bs = self.dataset, len(self.dataset), self.batch_size
        order = torch.randperm(n, generator=self.generator).to(ds.device) if self.shuffle else None
        draws = ds.draws(n)  # row i augments the i-th image of the pass
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            pick = order[start:stop] if order is not None else slice(start, stop)
            r = draws[start:stop] if draws is not None else None
            yield ds.transform(ds.images[pick], r), ds.labels[pick]


def device_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    transform: EvalTransform,
    device: torch.device | str,
    batch_size: int,
    shuffle: bool,
    augment_seed: int,
    order_seed: int,
) -> DeviceLoader:
    """A :class:`DeviceLoader` over ``images[indices]`` with the batched form of ``transform``."""
    ds = DeviceDataset(images, labels, indices, DeviceAugment.like(transform), device, augment_seed)
    return DeviceLoader(ds, batch_size, shuffle, order_seed)


def uint8_bytes(images: torch.Tensor, index_sets: Sequence[torch.Tensor]) -> int:
    """Bytes that ``images[idx]`` for every index set takes as uint8 (what a placement copies)."""
    per_image = math.prod(images.shape[1:]) * images.element_size()
    return per_image * sum(len(i) for i in index_sets)
