"""NUTS chains advanced by one compiled program, a chunk of iterations at a time.

Why not numpyro's `MCMC.run`: it compiles one loop per call (the screening warmup's, then
the main run's, then a restart's), and its progress bar calls back into Python from inside
that loop, which keeps JAX from writing the program to the persistent cache. Here the
chains' transitions (numpyro's NUTS kernel, `failures.CountingNUTS`) run in a loop of a
length chosen at run time, so one program serves the screen, the rest of the warmup, the
sampling and a restart; between chunks the host moves screened chains, reads the log
densities and updates the progress bar. A chunk's draws are those of numpyro's `MCMC`
with the same key, iteration for iteration (`tests/test_chunks.py`).

`Chunks` places the one-chain functions over the chains as numpyro's chain methods do:
`jax.pmap` ("parallel"), `jax.vmap` ("vectorized"), one chain after the other
("sequential"), or `jax.shard_map` over a mesh ("sharded").
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .failures import CountedHMCState
from .initialisation import NO_START

CAPACITY = 100  # iterations a chunk can hold (the program's buffers)
TARGET_SECONDS = 0.5  # a chunk's length aims at this much time between progress updates
FIELDS = ("diverging", "potential_energy", "num_steps", "accept_prob", "energy",
          "adapt_state.step_size", "rejected")


def _field(state, name):
    for part in name.split("."):
        state = getattr(state, part)
    return state


def _take(tree, c):
    return jax.tree.map(lambda x: x[c], tree)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class Chunks:
    """`num_chains` chains of `kernel` (a `CountingNUTS` for `model_fn(**model_kwargs)`)
    with a warmup of `num_warmup` iterations, placed by `chain_method` ("parallel",
    "vectorized", "sequential" or "sharded"). `start` gives the chains' first states,
    `advance` runs them for a number of iterations and returns what they recorded."""

    def __init__(self, kernel, num_chains: int, num_warmup: int, chain_method: str,
                 model_kwargs: dict):
        self.kernel = kernel
        self.num_chains = num_chains
        self.num_warmup = num_warmup
        self.chain_method = chain_method if num_chains > 1 else "sequential"
        self.model_kwargs = model_kwargs
        self._start_fn = self._place(self._start_one, batched=2)
        self._search_fn = self._place(self._search_one, batched=1)
        self._chunk_fn = self._place(self._nuts_chunk, batched=1, shared=2)

    # ----------------------------------------------------------- one chain's programs
    def _start_one(self, key, params):
        state = self.kernel.init(key, self.num_warmup, params, (), self.model_kwargs)
        return state, self._feasible(state)

    def _search_one(self, key):
        """numpyro's own start (the init strategy, redrawn until feasible)."""
        state = self.kernel.init(key, self.num_warmup, None, (), self.model_kwargs)
        return state, self._feasible(state)

    @staticmethod
    def _feasible(state):
        finite = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(state.z_grad)]
        return jnp.isfinite(state.potential_energy) & jnp.all(jnp.stack(finite))

    def _postprocess(self):
        return self.kernel.postprocess_fn((), self.model_kwargs)

    def _nuts_chunk(self, state, n, keep):
        """`n` (at most `CAPACITY`) transitions from `state`: the last state, each
        iteration's `FIELDS`, and, when `keep`, its constrained draw (numpyro's
        postprocessing: sites and deterministic sites), else zeros."""
        post = self._postprocess()
        shapes = jax.eval_shape(post, state.z)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        record = {f: jnp.zeros((CAPACITY,) + jnp.shape(_field(state, f)),
                               jnp.result_type(_field(state, f))) for f in FIELDS}
        draws = jax.tree.map(lambda z: jnp.zeros((CAPACITY,) + z.shape, z.dtype), zeros)

        def body(i, carry):
            state, record, draws = carry
            state = self.kernel.sample(state, (), self.model_kwargs)
            record = {f: record[f].at[i].set(_field(state, f)) for f in FIELDS}
            draw = lax.cond(keep, post, lambda z: zeros, state.z)
            draws = jax.tree.map(lambda b, x: b.at[i].set(x), draws, draw)
            return state, record, draws

        return lax.fori_loop(0, n, body, (state, record, draws))

    # ------------------------------------------------------------------- placement
    def _place(self, fn, batched: int, shared: int = 0):
        """`fn` (`batched` arguments of one chain, then `shared` arguments common to all
        chains) mapped over the chains as `chain_method` says."""
        in_axes = (0,) * batched + (None,) * shared
        if self.chain_method == "parallel":
            return jax.pmap(fn, in_axes=in_axes)
        if self.chain_method == "vectorized":
            return jax.jit(jax.vmap(fn, in_axes=in_axes))
        if self.chain_method == "sharded":
            return _sharded(fn, in_axes, self.num_chains)
        one = jax.jit(fn)

        def sequential(*args):
            batched = [a for a, ax in zip(args, in_axes, strict=True) if ax == 0]
            rest = [a for a, ax in zip(args, in_axes, strict=True) if ax is None]
            outs = [one(*[_take(a, c) for a in batched], *rest)
                    for c in range(self.num_chains)]
            return _stack(outs)

        return sequential

    # ------------------------------------------------------------------------ steps
    def keys(self, key):
        """One key per chain, as numpyro's `MCMC.run` gives them (one chain: `key`)."""
        if self.num_chains == 1:
            return jax.tree.map(lambda k: k[None], key)
        return jax.random.split(key, self.num_chains)

    def start(self, key, init_params=None):
        """The chains' first states: at `init_params` (unconstrained, leading chain axis)
        or, when `None`, where numpyro's init strategy finds a feasible point. Raises
        numpyro's "Cannot find valid initial parameters" when a chain has none."""
        keys = self.keys(key)
        if init_params is None:
            state, ok = self._search_fn(keys)
        else:
            # numpyro's convention: a leading chain axis only for several chains
            one = self.num_chains == 1
            params = jax.tree.map(lambda x: np.asarray(x)[None] if one else np.asarray(x),
                                  init_params)
            state, ok = self._start_fn(keys, params)
        if not np.all(np.asarray(ok)):
            raise RuntimeError(f"{NO_START}: the log density or its gradient is not finite "
                               "at the start of some chain")
        zero = jnp.zeros(np.shape(state.i), jnp.int32)
        if not isinstance(state, CountedHMCState):
            state = CountedHMCState(*state, zero, zero)
        return state

    def advance(self, state, n: int, keep: bool):
        """`n` (at most `CAPACITY`) iterations of every chain: the last states, `FIELDS`
        (chain x iteration, on the host) and, when `keep`, the constrained draws (chain x
        iteration, on the host; else `None`)."""
        state, record, draws = self._chunk_fn(state, jnp.asarray(n, jnp.int32),
                                              jnp.asarray(keep))
        record = {f: np.asarray(v)[:, :n] for f, v in record.items()}
        draws = jax.tree.map(lambda x: np.asarray(x)[:, :n], draws) if keep else None
        return state, record, draws


def placed_like(new, old):
    """`new` (chains' states the host changed: `restart.states`, on the host) laid out on
    the devices as `old`, the chunk program's last output: the program's cache keys on its
    inputs' placement, and would trace and compile again for host arrays."""
    return jax.tree.map(lambda n, o: jax.device_put(n, o.sharding), new, old)


def chain_mesh(num_chains: int, devices=None):
    """A one-axis mesh named `"chain"` over as many of `devices` (default: all) as divide
    `num_chains`, for chains split evenly over the devices."""
    from jax.sharding import Mesh

    devices = list(jax.devices() if devices is None else devices)
    used = max(d for d in range(1, min(len(devices), num_chains) + 1) if num_chains % d == 0)
    return Mesh(devices[:used], ("chain",))


def _sharded(fn, in_axes, num_chains):
    """`fn` over the chains split evenly over the devices (see `methods.sharded_chains`)."""
    from jax.sharding import PartitionSpec

    specs = tuple(PartitionSpec("chain") if ax == 0 else PartitionSpec() for ax in in_axes)
    local = jax.vmap(fn, in_axes=in_axes)
    return jax.jit(jax.shard_map(local, mesh=chain_mesh(num_chains), in_specs=specs,
                                 out_specs=PartitionSpec("chain"), check_vma=False))


class Progress:
    """A progress bar over a run's iterations, updated by the host between chunks (no
    callback inside the compiled program); does nothing when `enabled` is false."""

    def __init__(self, enabled: bool, total: int, num_chains: int):
        self.bar = None
        self.divergent = 0
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="warmup", file=sys.stderr,
                            unit="it", postfix=f"{num_chains} chains")

    def update(self, n: int, phase: str, record: dict):
        if self.bar is None:
            return
        self.bar.set_description(phase, refresh=False)
        step = np.asarray(record["adapt_state.step_size"])[:, -1]
        self.divergent += int(np.asarray(record["diverging"]).sum())
        self.bar.set_postfix_str(f"step size {np.median(step):.2g}, "
                                 f"{self.divergent} divergent", refresh=False)
        self.bar.update(n)

    def extend(self, n: int):
        """`n` more iterations to come (a restart)."""
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Run:
    """Runs `Chunks` through phases, choosing each chunk's length so that a chunk takes
    about `TARGET_SECONDS` (at most `CAPACITY` iterations, and never past a phase's end),
    and keeps the draws."""

    def __init__(self, chunks: Chunks, progress: Progress):
        self.chunks = chunks
        self.progress = progress
        self.length = 10  # the first chunk compiles: short, then timed
        self.draws: list = []

    def phase(self, state, iterations: int, name: str, keep: bool = False):
        """`iterations` iterations from `state`; returns the last state and this phase's
        records (field -> chain x iteration)."""
        done, records = 0, []
        if iterations == 0:  # e.g. NUTS(num_warmup=0)
            return state, None
        while done < iterations:
            n = min(self.length, iterations - done)
            began = time.perf_counter()
            state, record, draws = self.chunks.advance(state, n, keep)
            spent = time.perf_counter() - began
            if n >= self.length:
                self.length = int(np.clip(n * TARGET_SECONDS / max(spent, 1e-3), 1, CAPACITY))
            records.append(record)
            if keep:
                self.draws.append(draws)
            self.progress.update(n, name, record)
            done += n
        return state, {f: np.concatenate([r[f] for r in records], axis=1) for f in FIELDS}

    def samples(self, thinning: int) -> dict:
        """The kept draws (chain x draw), thinned as numpyro thins them: every
        `thinning`-th, ending at the last."""
        joined = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *self.draws)
        return jax.tree.map(lambda x: x[:, thinned(x.shape[1], thinning)], joined)


def thinned(num_samples: int, thinning: int) -> slice:
    """numpyro's thinning of `num_samples` draws: `num_samples // thinning` of them, every
    `thinning`-th, ending at the last."""
    return slice(num_samples % thinning + thinning - 1, None, thinning)
