"""Chains that sampled far below the others, and where to restart them (`NUTS(restart_stuck=
True)`).

A chain started at a random point can settle in a minor mode during warmup and stay there
through sampling (lynx-hare: one seed in ten kept a chain at a mean log density of -61,330,
the others at -137; `benchmarks/RESULTS.md`). numpyro's `MCMC` runs warmup in one
compiled loop, so a chain cannot be dropped part-way through it; what can be done cheaply
is to look at the finished run and, when a chain is far below, run the whole thing once
more from the other chains' final points. The common case costs nothing: the decision
reads the log densities the run already recorded, and runs whose chains agree are
returned untouched.

That check comes late: a chain stuck from the start spends warmup and sampling in
maximum-depth trees before it is seen (lynx-hare: 162 s instead of 16). So NUTS runs the
first `screen_length` iterations of the warmup as a screen, and a chain that ends them far
below the others takes another chain's state (position and adaptation) before the rest of
the warmup resumes the chains' states (`screen_note`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GAP_NATS = 10.0  # the smallest gap in mean log density that counts as "far below"
GAP_SDS = 5.0  # ... and at least this many within-chain sds of the log density
NOTES = "run_notes"  # the key of a method's `stats` that carries notes for the DataTree


def far_below(lp) -> np.ndarray:
    """Which chains' mean log density (`lp`: chain x draw) is below the best chain's by
    more than `max(GAP_NATS, GAP_SDS * median within-chain sd)`.

    Within one mode every chain has the same expected mean log density, and the mean of
    hundreds of draws is known to a fraction of a nat, so a gap of 10 nats or more is a
    chain in another mode, or one not yet converged. A chain whose mean is not finite is
    below too. One chain: nothing to compare.
    """
    lp = np.asarray(lp, dtype=float)
    if lp.shape[0] < 2:
        return np.zeros(lp.shape[0], dtype=bool)
    means = lp.mean(axis=1)
    finite = np.isfinite(means)
    if not finite.any():
        return np.zeros(lp.shape[0], dtype=bool)
    spread = float(np.median(lp[finite].std(axis=1, ddof=1)))
    gap = max(GAP_NATS, GAP_SDS * spread)
    return ~finite | (means < means[finite].max() - gap)


SCREEN_ITERATIONS = 75  # Stan's and numpyro's first fast adaptation window
SCREEN_MIN_WARMUP = 300  # shorter warmups are not screened: they keep every iteration


def screen_length(num_warmup: int, num_chains: int) -> int:
    """Iterations of the screening warmup: Stan's first fast window (75) of a warmup of at
    least 300 iterations; 0 (no screen) for one chain or a shorter warmup, which needs its
    iterations for adaptation (a smoke run, or a short run of a model known to be easy)."""
    if num_chains < 2 or num_warmup < SCREEN_MIN_WARMUP:
        return 0
    return SCREEN_ITERATIONS


def screen_window(lp) -> np.ndarray:
    """The last third (at least 10 iterations) of the screening run's log densities
    (`lp`: chain x iteration), where `far_below` judges it: the start of the run is the
    chains' descent from their starting points."""
    lp = np.asarray(lp, dtype=float)
    return lp[:, -max(10, lp.shape[1] // 3):]


def below_best(scores) -> np.ndarray:
    """Which chains' `scores` (one per chain: the log density of their parameters with a
    latent path integrated out, `path_screen.scorer`) are below the best by more than
    `GAP_NATS`, or not finite. A score is one point's (a median of particle-filter
    estimates, to about half a nat), not a mean over draws: within one mode of a few
    parameters two points rarely differ by 10 nats (6 parameters: half a chi-square
    with 6 degrees of freedom, over 10 with probability 0.003)."""
    scores = np.asarray(scores, dtype=float)
    finite = np.isfinite(scores)
    if scores.size < 2 or not finite.any():
        return np.zeros(scores.size, dtype=bool)
    return ~finite | (scores < scores[finite].max() - GAP_NATS)


def path_screen_points(num_warmup: int, num_chains: int) -> list[int]:
    """The warmup iterations after which a latent path's chains are screened by their
    scores (`below_best`): the ends of the adaptation windows (numpyro's schedule, Stan's)
    in the first half of the warmup, so that a moved chain has the second half to move
    away from its donor; none for one chain or a warmup shorter than
    `SCREEN_MIN_WARMUP`."""
    from numpyro.infer.hmc_util import build_adaptation_schedule

    if num_chains < 2 or num_warmup < SCREEN_MIN_WARMUP:
        return []
    ends = [int(end) + 1 for _, end in build_adaptation_schedule(num_warmup)]
    return [e for e in ends if e <= num_warmup // 2]


def positions(z, source) -> dict:
    """The positions (`z`, a pytree with a leading chain axis) of the chains `source`, in
    that order, on the host: parallel chains' states are laid out over the devices, and
    numpyro's `pmap` refuses an argument gathered from them."""
    return jax.tree.map(lambda x: np.asarray(x)[source], z)


def states(state, source):
    """The whole states (position, adaptation, random key, counters: a numpyro `HMCState`
    with a leading chain axis) of the chains `source`, in that order, on the host, as
    `positions`. A chain that takes another's state gets a key of its own (the other's
    folded with its index), so that the two do not follow the same trajectories."""
    source = np.asarray(source)

    def take(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x[jnp.asarray(source)]  # a typed key has no host array
        return np.asarray(x)[source]

    out = jax.tree.map(take, state)
    keys = [jax.random.fold_in(out.rng_key[c], c + 1) if source[c] != c else out.rng_key[c]
            for c in range(len(source))]
    keys = jnp.stack(keys)
    return out._replace(rng_key=keys if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
                        else np.asarray(keys))


def _means_and_best(lp):
    """Each chain's mean log density (`lp`: chain x draw) and the best finite one."""
    means = np.asarray(lp, dtype=float).mean(axis=1)
    return means, _best(means)


def _best(values) -> float:
    """The largest finite value."""
    values = np.asarray(values, dtype=float)
    return float(np.nanmax(np.where(np.isfinite(values), values, np.nan)))


def screen_note(window, below, source, iterations: int) -> str:
    """What the screening warmup saw (`window`: its last log densities, chain x iteration)
    and did, for the DataTree."""
    means, best = _means_and_best(window)
    moved = ", ".join(f"chain {c} (mean log density {means[c]:.4g}; moved to chain "
                      f"{source[c]}'s position and adaptation)" for c in np.flatnonzero(below))
    return (f"the screening warmup ({iterations} iterations) left {moved} far below the "
            f"best chain ({best:.4g}) over its last {np.shape(window)[1]} iterations; "
            "the rest of the warmup went on from these states")


def _moved(scores, below, source, verb: str, what: str) -> str:
    return ", ".join(f"chain {c} (score {scores[c]:.4g}; {verb} chain {source[c]}'s {what})"
                     for c in np.flatnonzero(below))


def path_screen_note(scores, below, source, iteration: int) -> str:
    """What a latent path's screen at warmup iteration `iteration` saw (`scores`: the
    chains' log densities of the parameters alone) and did, for the DataTree."""
    best = _best(scores)
    return (f"after warmup iteration {iteration}, the density of the parameters alone "
            f"(path integrated out by a particle filter) left "
            f"{_moved(scores, below, source, 'moved to', 'position and adaptation')} "
            f"far below the best chain ({best:.4g})")


def path_note(scores, below, source) -> str:
    """The restart note of a latent path's run whose chains ended far apart in the
    density of their parameters alone (`scores`)."""
    best = _best(scores)
    moved = _moved(scores, below, source, "restarted from", "final point")
    return (f"the first run ended with {moved} far below the best chain ({best:.4g}) in the "
            "density of the parameters alone (path integrated out by a particle filter); "
            "NUTS ran warmup and sampling once more and kept only the second run. "
            "NUTS(restart_stuck=False) keeps the first run")


def donors(below) -> np.ndarray:
    """`source[c]`: the chain whose final point chain c restarts from: itself when it was
    not below, else the chains that were not, in turn (so that restarted chains start from
    different points when there are several donors)."""
    below = np.asarray(below, dtype=bool)
    good = np.flatnonzero(~below)
    source = np.arange(below.size)
    source[below] = good[np.arange(int(below.sum())) % good.size]
    return source


def note(lp, below, source) -> str:
    """What the first run saw and what was done, for the warning and the DataTree."""
    means, best = _means_and_best(lp)
    stuck = ", ".join(f"chain {c} (mean log density {means[c]:.4g}; restarted from chain "
                      f"{source[c]}'s final point)" for c in np.flatnonzero(below))
    return (f"the first run left {stuck} far below the best chain ({best:.4g}); NUTS ran "
            "warmup and sampling once more with every chain starting from its own final "
            "point or, for these, another chain's, and kept only the second run. "
            "NUTS(restart_stuck=False) keeps the first run")
