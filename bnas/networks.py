"""Network layouts by name: which evaluation network, search network and augmentation a run uses.

``NETWORKS`` maps a layout name to a :class:`NetworkLayout`:

* ``cifar`` -- DARTS ``NetworkCIFAR`` (3x3 stem at full resolution) and the CIFAR super-network; the
  CIFAR augmentation (pad-crop, flip, Cutout).
* ``imagenet`` -- DARTS / PC-DARTS ``NetworkImageNet`` (stems striding 8, ImageNet auxiliary head) and
  PC-DARTS' ImageNet super-network (``model_search_imagenet.py``); the ImageNet augmentation (random
  resized crop, flip, colour jitter; resize + centre crop for evaluation).

The setting ``network`` (``auto``, ``cifar`` or ``imagenet``) chooses one; ``auto`` takes the dataset's
``default_network`` (``imagenet`` for the ``imagenet`` dataset, ``cifar`` otherwise). When the choice is
``imagenet``, :data:`bnas.config.IMAGENET_PROTOCOL` supplies the retraining protocol's settings the
configuration does not set itself (:func:`bnas.config.config_from_dict`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from bnas.catalog import NetworkChoice, resolve_network  # noqa: F401  (re-exported)
from bnas.eval_network import EvalNetwork, EvalNetworkImageNet
from bnas.registry import Registry
from bnas.supernet import SuperNetwork, SuperNetworkImageNet


@dataclass(frozen=True)
class NetworkLayout:
    """One layout: its evaluation network class, super-network class and augmentation family."""

    name: str
    eval_network: Callable[..., nn.Module]
    search_network: type[SuperNetwork]
    transforms: str
    doc: str


NETWORKS: Registry[NetworkLayout] = Registry("network")
NETWORKS.add(
    "cifar",
    NetworkLayout(
        "cifar", EvalNetwork, SuperNetwork, "cifar", "DARTS NetworkCIFAR: 3x3 stem at full resolution"
    ),
)
NETWORKS.add(
    "imagenet",
    NetworkLayout(
        "imagenet",
        EvalNetworkImageNet,
        SuperNetworkImageNet,
        "imagenet",
        "DARTS NetworkImageNet: stems stride 8 (224 -> 28 px)",
    ),
)


def build_eval_network(layout: str, genotype: Any, **kwargs: Any) -> nn.Module:
    """The evaluation network of ``layout``; ``kwargs`` as :class:`~bnas.eval_network.EvalNetwork`'s
    (``stem_multiplier`` applies to the CIFAR layout only and is dropped for others)."""
    entry = NETWORKS.get(layout)
    if entry.eval_network is not EvalNetwork:
        kwargs.pop("stem_multiplier", None)
    return entry.eval_network(genotype, **kwargs)
