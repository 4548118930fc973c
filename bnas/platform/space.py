"""The search space a study samples, as data: parsed from YAML, validated, turned into Optuna calls.

A study's ``space`` maps dotted :class:`~bnas.config.ExperimentConfig` keys to a domain::

    space:
      binarization.method:      {choice: [xnor, pcnn]}
      binarization.pcnn_lambda: {float: [1.0e-5, 1.0e-3], log: true, when: {binarization.method: pcnn}}
      search.sampling_k:        {choice: [2, 4]}
      reduction.epochs_per_stage: {int: [2, 4]}

Domains: ``choice`` (a list), ``float`` / ``int`` (``[low, high]``, inclusive, optional ``log: true``
or ``step``). ``when`` makes a parameter conditional (define-by-run): it is sampled only when every
named earlier parameter took one of the given values, e.g. PCNN's lambda only when PCNN is chosen.
The parameter name is the setting it overrides, so a trial's settings are the study's fixed settings
with the sampled values put in place (:func:`bnas.config.apply_overrides`).

Nothing here imports Optuna: :meth:`SearchSpace.sample` takes any object with Optuna's
``suggest_categorical`` / ``suggest_float`` / ``suggest_int`` methods.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bnas.config import PLACEMENT_KEYS, ConfigError, apply_overrides
from bnas.errors import did_you_mean

DOMAINS = ("choice", "float", "int")
PARAM_KEYS = DOMAINS + ("log", "step", "when")
#: Above this many combinations the space is checked one parameter at a time instead of exhaustively.
MAX_COMBINATIONS = 20_000
#: An int range with at most this many values is checked value by value; wider ones at their ends.
MAX_INT_VALUES = 64


@dataclass(frozen=True)
class Param:
    """One sampled setting: its dotted name, domain and (optional) condition on earlier parameters."""

    name: str
    kind: str  # "choice", "float" or "int"
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        """True when every condition holds for the values sampled so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or anything with the same ``suggest_*`` methods) for a value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_int(
            self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
        )

    def check_values(self) -> list[Any]:
        """The values validation tries: every choice, every int of a narrow range, else the ends."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            n = (int(self.high) - int(self.low)) // step + 1
            if not self.log and n <= MAX_INT_VALUES:
                return list(range(int(self.low), int(self.high) + 1, step))
            return sorted({int(self.low), int(self.high)})
        return sorted({float(self.low), float(self.high)})

    def describe(self) -> str:
        if self.kind == "choice":
            dom = f"one of {list(self.choices)}"
        else:
            dom = f"{self.kind} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")
            dom += f" step {self.step}" if self.step else ""
        cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when.items()) if self.when else ""
        return f"{self.name}: {dom}{cond}"


@dataclass(frozen=True)
class SearchSpace:
    """The ordered parameters of a study (YAML order is sampling order)."""

    params: tuple[Param, ...] = ()

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: sample the active parameters in order; returns ``{name: value}``."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return values

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Every combination of the values :meth:`Param.check_values` gives, honouring ``when``."""

        def rec(i: int, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if i == len(self.params):
                yield dict(values)
                return
            p = self.params[i]
            if not p.active(values):
                yield from rec(i + 1, values)
                return
            for v in p.check_values():
                values[p.name] = v
                yield from rec(i + 1, values)
            values.pop(p.name, None)

        yield from rec(0, {})

    def count_combinations(self) -> int:
        """An upper bound of :meth:`combinations` (conditions ignored)."""
        return math.prod(len(p.check_values()) for p in self.params) if self.params else 1

    def probe_points(self) -> Iterator[dict[str, Any]]:
        """What validation checks: all combinations when there are few, else one value at a time.

        The one-at-a-time probe varies a single parameter while the others take their first value
        (and switches on the conditions it depends on), so every value is still checked once.
        """
        if self.count_combinations() <= MAX_COMBINATIONS:
            yield from self.combinations()
            return
        first = {p.name: p.check_values()[0] for p in self.params}
        for p in self.params:
            for v in p.check_values():
                point = dict(first)
                point[p.name] = v
                for cname, allowed in p.when.items():
                    point[cname] = allowed[0]
                values: dict[str, Any] = {}
                for q in self.params:
                    if q.active(values):
                        values[q.name] = point[q.name]
                yield values


def parse_space(raw: Any, source: str, valid_settings: list[str]) -> SearchSpace:
    """Build a :class:`SearchSpace` from the YAML mapping; errors name the file and ``space.<name>``.

    ``valid_settings`` are the dotted keys of :class:`~bnas.config.ExperimentConfig`; every parameter
    name must be one of them.
    """
    if raw is None:
        return SearchSpace()
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of setting -> domain, got {raw!r}", source, "space")
    params: list[Param] = []
    for name, spec in raw.items():
        key = f"space.{name}"
        if name not in valid_settings:
            hint = did_you_mean(name, valid_settings, n=3)
            raise ConfigError(
                f"not a setting{hint}; a space parameter is named by the dotted setting it samples, "
                f"e.g. search.sampling_k",
                source,
                key,
            )
        if name in PLACEMENT_KEYS:
            raise ConfigError(
                "says where or how a trial runs, not what it computes (affects_results=False), so the "
                "study identity ignores it and it cannot be sampled; set it under fixed",
                source,
                key,
            )
        if not isinstance(spec, dict):
            raise ConfigError(f"expected a mapping such as {{choice: [...]}}, got {spec!r}", source, key)
        unknown = [k for k in spec if k not in PARAM_KEYS]
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown}; valid keys here: {', '.join(PARAM_KEYS)}", source, key
            )
        kinds = [k for k in DOMAINS if k in spec]
        if len(kinds) != 1:
            raise ConfigError(
                f"needs exactly one of {', '.join(DOMAINS)}, got {kinds or 'none'}", source, key
            )
        kind = kinds[0]
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"expected true or false, got {log!r}", source, f"{key}.log")
        step = spec.get("step")
        when = _parse_when(spec.get("when"), params, source, key)
        if kind == "choice":
            choices = spec["choice"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"expected a non-empty list, got {choices!r}", source, f"{key}.choice")
            if log or step is not None:
                raise ConfigError("log and step apply to float and int domains only", source, key)
            lists = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
            if lists:
                raise ConfigError(
                    f"choices must be numbers, strings, booleans or null (Optuna stores no {lists[0]!r}); "
                    f"to choose among lists, put them in the fixed settings of separate studies",
                    source,
                    f"{key}.choice",
                )
            params.append(Param(name, "choice", choices=tuple(choices), when=when))
            continue
        bounds = spec[kind]
        number = int if kind == "int" else (int, float)
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, number) for b in bounds)
        ):
            raise ConfigError(f"expected [low, high] ({kind}s), got {bounds!r}", source, f"{key}.{kind}")
        low, high = bounds
        if low > high:
            raise ConfigError(f"low {low} exceeds high {high}", source, f"{key}.{kind}")
        if log and low <= 0:
            raise ConfigError(f"a log domain needs low > 0, got {low}", source, f"{key}.{kind}")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
                raise ConfigError(f"expected a positive {kind}, got {step!r}", source, f"{key}.step")
            if log:
                raise ConfigError("step and log cannot be combined (Optuna)", source, key)
        params.append(Param(name, kind, low=low, high=high, log=log, step=step, when=when))
    return SearchSpace(tuple(params))


def _parse_when(raw: Any, earlier: list[Param], source: str, key: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"expected a mapping of earlier parameter -> value(s), got {raw!r}", source, f"{key}.when"
        )
    by_name = {p.name: p for p in earlier}
    out: dict[str, tuple[Any, ...]] = {}
    for cname, allowed in raw.items():
        if cname not in by_name:
            raise ConfigError(
                f"{cname!r} is not a parameter listed above this one; conditions may name: "
                f"{', '.join(by_name) or '(none)'}",
                source,
                f"{key}.when",
            )
        cond = by_name[cname]
        allowed_t = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if cond.kind == "choice":
            bad = [a for a in allowed_t if a not in cond.choices]
            if bad:
                raise ConfigError(
                    f"{bad} can never be sampled for {cname}; its choices: {list(cond.choices)}",
                    source,
                    f"{key}.when",
                )
        out[cname] = allowed_t
    return out


def resolved_settings(fixed: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """The fixed settings with the sampled dotted values put in place (a new nested dict)."""
    return apply_overrides(fixed, sampled, source="space")


def flat_space_params(sampled: dict[str, Any]) -> dict[str, Any]:
    """``space.<name>`` keys for trackers."""
    return {f"space.{k}": v for k, v in sampled.items()}
