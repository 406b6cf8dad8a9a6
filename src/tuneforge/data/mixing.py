"""Multi-task mixtures: several data sets in one run, each with its own layout, template and loss masking.

Why: fine-tuning on task A alone lets the model forget what it could do before; mixing A with data of the
abilities to keep (instruction following, say) is the standard remedy (T5's multi-task training, Raffel et al.
2020, https://arxiv.org/abs/1910.10683, sec. 3.5.2). The mixing rate of data set m, with n_m its size capped at K:

    proportional   r_m = min(n_m, K) / sum_j min(n_j, K)
    temperature    r_m = p_m^(1/T) / sum_j p_j^(1/T),  p_m the proportional rate (T = 1: proportional;
                   large T: equal shares; Arivazhagan et al. 2019, https://arxiv.org/abs/1907.05019)
    explicit       r_m = w_m / sum_j w_j

An epoch holds N = data.mixture_size examples (default sum n_m); data set m gives round(r_m N) of them (largest
remainders), drawn without replacement, or in whole passes plus a random remainder when it has fewer. Every
example keeps `source`, the entry's name. Validation sets are concatenated unsampled, so each task is scored.
"""
from __future__ import annotations

import math
import random

from ..errors import ConfigError


def mixing_rates(sizes: list[int], mode: str = "proportional", *, weights: list[float | None] | None = None,
                 temperature: float = 2.0, cap: int | None = None) -> list[float]:
    """Sampling rate of each data set (they sum to 1); see the module docstring for the formulas."""
    if not sizes:
        raise ConfigError("a mixture needs at least one data set", key="mixture")
    if mode == "explicit":
        if weights is None or any(w is None or w <= 0 for w in weights):
            raise ConfigError("explicit mixing needs a positive weight per data set", key="mixture")
        total = float(sum(weights))
        return [w / total for w in weights]
    capped = [min(n, cap) if cap is not None else n for n in sizes]
    if sum(capped) == 0:
        raise ConfigError("every data set of the mixture is empty", key="mixture")
    rates = [n / sum(capped) for n in capped]
    if mode == "proportional":
        return rates
    if mode == "temperature":
        scaled = [r ** (1.0 / temperature) for r in rates]
        return [s / sum(scaled) for s in scaled]
    raise ConfigError(f"unknown mixing {mode!r}; choose proportional, temperature or explicit", key="mixing")


def mixture_counts(rates: list[float], total: int) -> list[int]:
    """Integer counts summing to `total`, as close to rates x total as possible (largest remainder)."""
    exact = [r * total for r in rates]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(rates)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(items: list, count: int, rng: random.Random) -> list:
    """`count` items: whole passes over `items` while more are asked for than exist, then a random remainder."""
    if count and not items:
        raise ConfigError("cannot draw examples from an empty data set", key="mixture")
    passes, rest = divmod(count, len(items)) if items else (0, 0)
    return list(items) * passes + rng.sample(items, rest)
