"""The state of a search, which is also its checkpoint.

:class:`SearchState` holds the live objects of a search (super-network, weight optimizer and its
learning-rate schedule, :class:`~bnas.architect.Architect`, reduction strategy) with its position and
what it has recorded (reduction history, per-epoch metrics, per-stage records, elapsed seconds, phase
times). :meth:`SearchState.to_checkpoint` turns it into plain data (tensors, numbers, strings, lists,
dicts: readable with ``torch.load(..., weights_only=True)``); :meth:`SearchState.from_checkpoint`
loads such data into freshly built objects. Whether a checkpoint belongs to a run is decided by
:class:`bnas.training.RunFolder`, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bnas.architect import Architect
from bnas.errors import ConfigError
from bnas.reduction import ReductionStrategy
from bnas.supernet import SuperNetwork
from bnas.training import CHECKPOINT, UNLOADABLE, checked_count, unloadable

#: Format of the search checkpoint; a checkpoint of another version is refused.
CHECKPOINT_VERSION = 2


@dataclass
class SearchState:
    """Everything a search has built and measured so far; :meth:`to_checkpoint` is its checkpoint.

    Position: ``stage`` and ``epoch_in_stage`` are the next stage/epoch to run (``epoch_in_stage ==
    L`` means the reduction is next), ``global_epoch`` counts the super-network epochs done.
    """

    net: SuperNetwork
    weight_optimizer: torch.optim.SGD
    lr_schedule: torch.optim.lr_scheduler.CosineAnnealingLR
    architect: Architect
    strategy: ReductionStrategy
    stage: int = 0
    epoch_in_stage: int = 0
    global_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    phase_times_s: dict[str, float] = field(default_factory=dict)

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain data only (tensors, numbers, strings, lists, dicts): readable with ``weights_only``."""
        return {
            "version": CHECKPOINT_VERSION,
            "position": {
                "stage": self.stage,
                "epoch_in_stage": self.epoch_in_stage,
                "global_epoch": self.global_epoch,
            },
            "edge_ops": self.net.edge_ops,
            "net": self.net.state_dict(),
            # The optimizer's state is stored by position; the names check the order on resume.
            "weight_params": [n for n, _ in self.net.named_weight_parameters()],
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "architect": self.architect.state_dict(),
            "strategy": self.strategy.state_dict(),
            "history": self.history,
            "metrics": self.metrics,
            "stages": self.stages,
            "elapsed_s": self.elapsed_s,
            "phase_times_s": self.phase_times_s,
        }

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: dict[str, Any],
        build: Callable[[dict[str, list[list[str]]] | None], SearchState],
        source: str | None = None,
        total_epochs: int | None = None,
    ) -> SearchState:
        """The state saved in ``ckpt``; ``build(edge_ops)`` makes the fresh objects it is loaded into.

        ``source`` (the run folder) prefixes the :class:`ConfigError` raised for a checkpoint of
        another format version, one whose weight list does not fit the rebuilt network, or one whose
        position is not a count in range (``global_epoch`` at most ``total_epochs``).
        """
        try:
            return cls._restore(ckpt, build, source, total_epochs)
        except ConfigError:
            raise
        except UNLOADABLE as e:
            raise ConfigError(unloadable(e), source=source) from None

    @classmethod
    def _restore(
        cls,
        ckpt: dict[str, Any],
        build: Callable[[dict[str, list[list[str]]] | None], SearchState],
        source: str | None,
        total_epochs: int | None = None,
    ) -> SearchState:
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(
                f"{CHECKPOINT} has format version {ckpt.get('version')!r}, this version reads "
                f"{CHECKPOINT_VERSION}; pass resume=False (--no-resume) to start over",
                source=source,
            )
        state = build(ckpt["edge_ops"])
        state.net.load_state_dict(ckpt["net"])
        names = [n for n, _ in state.net.named_weight_parameters()]
        if names != ckpt["weight_params"]:
            raise ConfigError(
                f"{CHECKPOINT}: its weight list does not match the rebuilt super-network; pass "
                "resume=False (--no-resume) to start over",
                source=source,
            )
        state.weight_optimizer.load_state_dict(ckpt["weight_optimizer"])
        state.lr_schedule.load_state_dict(ckpt["lr_schedule"])
        state.architect.load_state_dict(ckpt["architect"])
        state.strategy.load_state_dict(ckpt["strategy"])
        pos = ckpt["position"]
        state.stage, state.epoch_in_stage, state.global_epoch = (
            checked_count("stage", pos["stage"]),
            checked_count("epoch_in_stage", pos["epoch_in_stage"]),
            checked_count("global_epoch", pos["global_epoch"], total_epochs),
        )
        state.history, state.metrics, state.stages = ckpt["history"], ckpt["metrics"], ckpt["stages"]
        state.elapsed_s, state.phase_times_s = ckpt["elapsed_s"], dict(ckpt["phase_times_s"])
        return state
