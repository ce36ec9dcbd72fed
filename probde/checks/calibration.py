"""Simulation-based calibration: `probde.sbc`.

Draw parameters from the prior, simulate data through the model's own observation
process, fit each simulated data set, and rank every prior draw among its posterior
draws (Talts, Betancourt, Simpson, Vehtari & Gelman 2018). When the inference is right,
each rank is uniform; a bug in the likelihood, a sampler that does not explore, or an
approximation that is too narrow shows up as a non-uniform rank distribution.

Why it is written here: no package runs SBC for an ODE model without a Python loop of
fits (`simuk` fits one data set at a time). With NUTS the fits here are one compiled
program over simulations and chains (numpyro's functional `hmc` kernel takes the data
as an argument; the model's program takes the simulated values in place of the data's,
`program.build`'s `values`), compiled once. On a GPU its lanes are vmapped; on a CPU they
run one after another inside the program (`lax.map`): under vmap every lane waits, at
each NUTS step, for the lane with the deepest tree and the longest solve, which on the
flu model made 8 simulations take 96 s against 25 s one after another (and 100 of the
simple machine's 42 s against 27 s). The uniformity test and the ECDF plot are ArviZ's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax import lax, random
from numpyro import handlers
from numpyro.infer import Predictive
from numpyro.infer.hmc import hmc
from numpyro.infer.util import ParamInfo, find_valid_initial_params, initialize_model

from .._checks import describe, integer_at_least
from ..inference import NUTS, infer
from ..inference.convergence import ConvergenceWarning
from ..inference.initialisation import init_strategy
from ..inference.methods import AbstractMethod
from ..inference.result import _parameter_names
from ..model import Model, sites
from ..observations import TimeSeries

# About this many posterior draws per simulation are kept for the ranks (thinned evenly):
# ranks then take about 100 values, and autocorrelated neighbours are mostly skipped.
RANK_DRAWS = 100
# A simulation's fit is flagged when its smallest bulk ESS (over the ranked parameters)
# falls below this: its ranks are then less trustworthy (Talts et al., section 5).
MIN_ESS = 50
# Progress is reported (and the compiled block of NUTS iterations reused) every
# ceil((warmup + samples) / BLOCKS) iterations.
BLOCKS = 20
_STRATEGY_TEXT = {"vmap": "one program, simulations vmapped",
                  "map": "one program, simulations one after another",
                  "loop": "one probde.infer fit at a time"}


@dataclasses.dataclass(frozen=True)
class SBCResult:
    """The outcome of `probde.sbc`.

    - `pvalues`: parameter (element) name -> p-value of ArviZ's uniformity test
      (`pot_c`, Tesso & Vehtari) of its ranks; small values (below 0.01, say) flag a
      miscalibrated inference.
    - `ranks`: name -> integer ranks `(num_simulations,)`, each in `0..num_draws`.
    - `num_draws`: the posterior draws each rank is taken among.
    - `prior_draws`: name -> the parameter values the data were simulated from.
    - `idata`: a DataTree with the group `prior_sbc` (the randomised PIT values
      `(rank + u) / (num_draws + 1)`, dims `chain` (1) and `draw` (the simulations), the
      layout `simuk` and `arviz.plot_ecdf_pit` use) and `prior` (the draws).
    - `min_ess`, `divergences`: per simulation, the smallest bulk ESS over the ranked
      parameters and the number of divergent transitions (NUTS).
    - `seconds`: wall time of the fits; `strategy`: how they ran (`"vmap"` or `"map"`:
      one compiled program over all simulations, lanes vmapped or one after another;
      `"loop"`: a loop of `probde.infer`); `vectorized`: not a loop.
    """

    pvalues: dict
    ranks: dict
    num_draws: int
    prior_draws: dict
    idata: xr.DataTree
    min_ess: np.ndarray
    divergences: np.ndarray
    seconds: float
    strategy: str

    @property
    def vectorized(self) -> bool:
        return self.strategy != "loop"

    @property
    def num_simulations(self) -> int:
        return len(self.min_ess)

    def __str__(self) -> str:
        lines = [f"SBC: {self.num_simulations} simulations, ranks among {self.num_draws} "
                 f"posterior draws, {self.seconds:.0f} s "
                 f"({_STRATEGY_TEXT[self.strategy]})",
                 f"{'parameter':<24} {'p-value':>8}"]
        lines += [f"{k:<24} {v:>8.3f}{'  <- not uniform' if v < 0.01 else ''}"
                  for k, v in self.pvalues.items()]
        low = int(np.sum(self.min_ess < MIN_ESS))
        if low:
            lines.append(f"{low} fit(s) with a bulk ESS below {MIN_ESS}")
        if np.sum(self.divergences):
            lines.append(f"{int(np.sum(self.divergences > 0))} fit(s) with divergences")
        return "\n".join(lines)

    def plot(self, path=None, *, bins: int | None = None):
        """Per parameter: the ECDF difference of the PIT values with its simultaneous
        95% band (ArviZ's `plot_ecdf_pit`, drawn here with matplotlib from ArviZ's
        statistics) above a rank histogram with the binomial 99% band of a uniform
        histogram. Returns the figure; saves it to `path` when given."""
        from .calibration_plot import plot_sbc

        return plot_sbc(self, path=path, bins=bins)


def _check_args(model, method, num_simulations, seed, simulator, vectorize):
    if not isinstance(model, Model):
        raise TypeError(f"model must be a probde.Model; got {describe(model)}")
    if not isinstance(method, AbstractMethod):
        raise TypeError(f"method must be a probde method such as probde.NUTS(); got "
                        f"{describe(method)}")
    integer_at_least("num_simulations", num_simulations, 2)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer; got {describe(seed)}")
    if not (isinstance(vectorize, bool) or vectorize in ("vmap", "map")):
        raise ValueError(f"vectorize must be True, False, 'vmap' or 'map'; got {vectorize!r}")
    if simulator is not None and not isinstance(simulator, Model):
        raise TypeError(f"simulator must be None or a probde.Model; got {describe(simulator)}")


def _sample_sites(model, prepared) -> set[str]:
    """The latent sample sites of the model's program (traced abstractly: no solve)."""
    fn = model.numpyro_model(prepared)
    found = {}

    def probe():
        with handlers.block(), handlers.seed(rng_seed=0):
            tr = handlers.trace(fn).get_trace(observed=True)
        found["names"] = {k for k, site in tr.items() if site["type"] == "sample"
                          and not site["is_observed"] and not sites.is_bookkeeping(k)}
        return jnp.zeros(())

    jax.eval_shape(probe)
    return found["names"]


def _latent(samples):
    return {k: v for k, v in samples.items() if not sites.is_bookkeeping(k)}


def simulate(model, prepared, num_simulations, key):
    """`(theta, values)`: `num_simulations` parameter draws from the prior of `model` and
    data simulated from each through its observation process, `(S, E, T, O)` with NaN
    where the data have no value. Draws whose solve fails or whose prediction is
    impossible are replaced by new ones (the posterior gives them no mass either)."""
    fn = model.numpyro_model(prepared)
    active = np.asarray(model.active(prepared))
    mask = prepared.mask & active[:, :, None]
    theta, values, drawn_so_far = {}, [], 0
    for attempt in range(20):
        n = max(2 * (num_simulations - drawn_so_far), 16)
        out = Predictive(fn, num_samples=n)(random.fold_in(key, attempt), observed=False)
        out = {k: np.asarray(v) for k, v in out.items()}
        y = out[sites.OBSERVED]
        ok = np.all(out[sites.VALID], axis=1) & np.all(np.isfinite(y) | ~mask, axis=(1, 2, 3))
        for k, v in _latent(out).items():
            theta.setdefault(k, []).append(v[ok])
        values.append(np.where(mask, y, np.nan)[ok])
        drawn_so_far += int(ok.sum())
        if drawn_so_far >= num_simulations:
            break
    else:
        raise RuntimeError(
            f"sbc: only {drawn_so_far} of {num_simulations} prior draws gave a feasible "
            "simulation (a solve that succeeds and a possible prediction); tighten the priors")
    theta = {k: np.concatenate(v)[:num_simulations] for k, v in theta.items()}
    return theta, np.concatenate(values)[:num_simulations]


def _data_with(data, prepared, values):
    """The user's data (a TimeSeries or a list of them) with `values` `(E, T, O)`."""
    series = [data] if isinstance(data, TimeSeries) else list(data)
    out = []
    times = np.asarray(prepared.times)
    obs = list(prepared.observables)
    for e, ts in enumerate(series):
        rows = np.searchsorted(times, ts.times)
        cols = [obs.index(o) for o in ts.observables]
        new = copy.copy(ts)
        new.values = np.asarray(values[e][np.ix_(rows, cols)], dtype=float)
        out.append(new)
    return out[0] if isinstance(data, TimeSeries) else out


def _nuts_fits(model, prepared, method, values, key, progress_bar, batch=None):
    """Posterior draws (unconstrained, `(S, C, N, ...)`), divergences `(S, C, N)`, and
    the postprocessing function: all simulations' NUTS chains as one compiled program,
    its lanes vmapped (`batch=None`) or run `batch` at a time."""
    fn = model.numpyro_model(prepared)
    S, C = values.shape[0], method.num_chains
    strategy = init_strategy(method.init_radius, fn)
    k_model, k_init, k_run = random.split(key, 3)
    info = initialize_model(k_model, fn, init_strategy=strategy, dynamic_args=True,
                            model_kwargs={"values": jnp.asarray(values[0])})
    init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")
    flat_values = jnp.asarray(np.repeat(values, C, axis=0))  # (S * C, E, T, O)
    keys = random.split(k_init, S * C)

    def start(k, v):
        k_find, k_kernel = random.split(k)
        found, _ = find_valid_initial_params(
            k_find, fn, init_strategy=strategy, model_kwargs={"values": v},
            prototype_params=info.param_info.z)
        params = ParamInfo(*found)  # a plain tuple comes back; the kernel wants ParamInfo
        return init_kernel(params, method.num_warmup, dense_mass=method.dense_mass,
                           target_accept_prob=method.target_accept,
                           max_tree_depth=method.max_tree_depth,
                           model_kwargs={"values": v}, rng_key=k_kernel)

    states = _over_lanes(start, S * C, batch)(keys, flat_values)
    del k_run  # numpyro keeps each chain's key in its state
    total = method.num_warmup + method.num_samples * method.thinning
    block = max(1, math.ceil(total / BLOCKS))

    def lane_block(state, v):
        """`block` NUTS transitions of one chain; what they kept, leading axis `block`."""
        def body(st, _):
            st = sample_kernel(st, model_kwargs={"values": v})
            return st, (st.z, st.diverging)
        return lax.scan(body, state, None, length=block)

    run_block = _over_lanes(lane_block, S * C, batch)
    kept_z, kept_div = [], []
    bar = _progress(progress_bar, total)
    done = 0
    while done < total:
        states, (z, div) = run_block(states, flat_values)  # z: (S*C, block, ...)
        lo = max(method.num_warmup - done, 0)
        hi = min(total - done, block)
        if hi > lo:
            kept_z.append(jax.tree.map(lambda a, lo=lo, hi=hi: np.asarray(a)[:, lo:hi], z))
            kept_div.append(np.asarray(div)[:, lo:hi])
        done += block
        if bar is not None:
            bar.update(min(block, total - (done - block)))
    if bar is not None:
        bar.close()
    # (S*C, iterations, ...) -> (S, C, draws, ...), thinned as the method asks
    z = jax.tree.map(lambda *a: np.concatenate(a, axis=1), *kept_z)
    z = jax.tree.map(lambda a: a[:, ::method.thinning].reshape((S, C, -1) + a.shape[2:]), z)
    div = np.concatenate(kept_div, axis=1)[:, ::method.thinning].reshape(S, C, -1)
    return z, div, info.postprocess_fn


def _over_lanes(fn, lanes, batch=None):
    """`fn` mapped over a leading axis of `lanes` (simulation x chain), compiled: split
    evenly over the devices (as many as divide `lanes`) with `jax.shard_map`, and on each
    device vmapped (`batch=None`) or run `batch` lanes at a time (`lax.map`). Each device
    runs its own loops: a lane that needs a deep tree or a long solve holds up only the
    lanes of its device, and under `lax.map` only the lanes of its batch (under vmap,
    every lane of a device waits for the slowest)."""
    from jax.sharding import Mesh, PartitionSpec

    if batch is None:
        mapped = jax.vmap(fn)
    else:
        def mapped(*args):
            return lax.map(lambda a: fn(*a), args, batch_size=batch if batch > 1 else None)
    devices = jax.devices()
    used = max(d for d in range(1, min(len(devices), lanes) + 1) if lanes % d == 0)
    if used == 1:
        return jax.jit(mapped)
    spec = PartitionSpec("lane")
    return jax.jit(jax.shard_map(mapped, mesh=Mesh(devices[:used], ("lane",)),
                                 in_specs=spec, out_specs=spec, check_vma=False))


def _constrain(postprocess_gen, z, values):
    """Constrained parameters (and deterministic sites) of draws `z` `(S, L, ...)`."""
    def one(zs, v):
        post = postprocess_gen(values=v)
        return jax.vmap(post)(zs)
    out = jax.jit(jax.vmap(one))(z, jnp.asarray(values))
    return {k: np.asarray(v) for k, v in _latent(out).items()}


def _loop_fits(model, data, prepared, method, values, seed, progress_bar):
    """Posterior draws `(S, C, N, ...)` from `probde.infer` on each simulated data set."""
    draws, div = {}, []
    bar = _progress(progress_bar, len(values))
    unconverged = 0
    for s, v in enumerate(values):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            result = infer(model, _data_with(data, prepared, v), method, seed=seed + s,
                           num_prior_samples=0, progress_bar=False)
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        post = result.idata["posterior"]
        for k in post.data_vars:
            draws.setdefault(k, []).append(np.asarray(post[k].values))
        stats = result.idata["sample_stats"]
        div.append(np.asarray(stats["diverging"].values) if "diverging" in stats else
                   np.zeros((post.sizes["chain"], post.sizes["draw"]), bool))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {k: np.stack(v) for k, v in draws.items()}, np.stack(div), unconverged


def _progress(progress_bar, total):
    if not progress_bar:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sbc", file=sys.stderr)


def _element_names(name, shape):
    if not shape:
        return [(name, ())]
    return [(f"{name}[{','.join(str(i) for i in idx)}]", idx) for idx in np.ndindex(shape)]


def _ranks(names, theta, draws, rng):
    """Integer ranks, PIT values and the number of draws, per parameter element."""
    ranks, pit, num = {}, {}, None
    for name in names:
        post = draws[name]  # (S, C, N, ...)
        S = post.shape[0]
        post = post.reshape((S, -1) + post.shape[3:])
        keep = max(1, post.shape[1] // RANK_DRAWS)
        post = post[:, ::keep]
        num = post.shape[1]
        r = np.sum(post < theta[name][:, None], axis=1)
        ranks[name] = r
        pit[name] = (r + rng.uniform(size=r.shape)) / (num + 1)
    return ranks, pit, num


def _bulk_ess(draws, names):
    """Per simulation: the smallest bulk ESS over the parameters' elements."""
    from arviz_stats.base import array_stats

    worst = None
    for name in names:
        x = draws[name]  # (S, C, N, ...)
        x = np.moveaxis(x.reshape(x.shape[:3] + (-1,)), 3, 1)  # (S, K, C, N)
        ess = np.min(array_stats.ess(x, chain_axis=-2, draw_axis=-1, method="bulk"), axis=1)
        worst = ess if worst is None else np.minimum(worst, ess)
    return worst


def sbc(model, data, method=None, *, num_simulations: int, seed: int = 0, simulator=None,
        vectorize: bool | str = True, progress_bar: bool | None = None) -> SBCResult:
    """Simulation-based calibration of `method` on `model`.

    **Arguments:**

    - `model`, `data`: the model as it will be fitted, and data that fix the times,
      experiments, inputs and the missing-value mask (their values are not used).
    - `method`: the inference to check (default `probde.NUTS()`).
    - `num_simulations`: simulated data sets (100 or more for a test with power; ranks
      of fewer are coarse).
    - `simulator`: a second `probde.Model` with the same parameter names that generates
      the data instead of `model` (parameters from its prior, data from its
      observation process), to see what a misspecified model does to the fit.
    - `vectorize`: with `probde.NUTS` on an ODE (or emulator) model, all fits run as one
      program over simulations and chains, compiled once. `True` picks how its lanes
      run: vmapped on a GPU or TPU (`"vmap"`), one after another on a CPU (`"map"`,
      where vmap makes every lane wait for the slowest one's tree and solve). `False`
      (and any other method, or an SDE model) fits one data set at a time with
      `probde.infer`.

    Each simulation draws the parameters from the prior, simulates the data through the
    model's observation process (prior draws whose solve fails or whose prediction is
    impossible are redrawn: the posterior gives them no mass either), fits it, and ranks
    each parameter's prior draw among about 100 posterior draws (thinned evenly from all
    chains). Data-dependent settings of the model (a deep GP's standardisation) come
    from `data` and stay fixed. Returns an `SBCResult` (`pvalues`, `ranks`, `idata`,
    `plot()`).

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro.distributions as dist, probde
    >>> decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    >>> model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.3)}, jnp.array([1.0]),
    ...                      probde.noise.Normal(sigma=0.1))
    >>> data = probde.TimeSeries([0.5, 1.0, 2.0], [0.0, 0.0, 0.0], observables=("x",))
    >>> method = probde.NUTS(num_chains=1, num_warmup=100, num_samples=200)
    >>> check = probde.sbc(model, data, method, num_simulations=20, seed=0)
    >>> check.ranks["k"].shape, check.num_draws
    ((20,), 100)

    ```
    """
    method = NUTS() if method is None else method
    _check_args(model, method, num_simulations, seed, simulator, vectorize)
    if progress_bar is None:
        progress_bar = sys.stderr.isatty()
    prepared = model.prepare(data)
    generator = model if simulator is None else simulator
    if simulator is not None:
        missing = sorted(_sample_sites(model, prepared)
                         - _sample_sites(simulator, simulator.prepare(data)))
        if missing:
            raise ValueError(f"simulator must have the parameters of model; it lacks {missing}")
    key_sim, key_fit, key_pit = random.split(random.PRNGKey(int(seed)), 3)
    theta, values = simulate(generator, generator.prepare(data), num_simulations, key_sim)
    strategy = _strategy(vectorize, method, model)
    start = time.perf_counter()
    if strategy != "loop":
        batch = None if strategy == "vmap" else 1
        z, div, postprocess = _nuts_fits(model, prepared, method, values, key_fit,
                                         progress_bar, batch)
        S, C, N = div.shape
        flat = jax.tree.map(lambda a: a.reshape((S, C * N) + a.shape[3:]), z)
        draws = _constrain(postprocess, flat, values)
        draws = {k: v.reshape((S, C, N) + v.shape[2:]) for k, v in draws.items()}
        unconverged = None
    else:
        draws, div, unconverged = _loop_fits(model, data, prepared, method, values, int(seed),
                                             progress_bar)
    seconds = time.perf_counter() - start
    names = [n for n in _parameter_names(model, draws) if n in theta]
    ranks, pit, num = _ranks(names, theta, draws, np.random.default_rng(int(seed)))
    ess = _bulk_ess(draws, names)
    return _result(names, theta, ranks, pit, num, ess, div, seconds, strategy, unconverged)


def _strategy(vectorize, method, model) -> str:
    """"vmap", "map" or "loop": how `sbc` runs its fits (see its `vectorize`)."""
    if not (vectorize and isinstance(method, NUTS) and model.sde is None):
        return "loop"
    if vectorize is True:
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return vectorize


def _result(names, theta, ranks, pit, num, ess, div, seconds, strategy, unconverged):
    from arviz_stats.base import array_stats

    element_ranks, element_p = {}, {}
    for name in names:
        for label, idx in _element_names(name, ranks[name].shape[1:]):
            u = pit[name][(slice(None),) + idx]
            element_ranks[label] = ranks[name][(slice(None),) + idx]
            element_p[label] = float(array_stats.uniformity_test(u, axis=-1)[0])
    group = {n: pit[n][None] for n in names}
    prior = {n: theta[n][None] for n in names}
    import arviz_base

    idata = arviz_base.from_dict({"prior_sbc": group, "prior": prior})
    idata.attrs["num_draws"] = int(num)
    if unconverged:
        warnings.warn(f"sbc: {unconverged} of {len(ess)} fits failed their convergence checks",
                      ConvergenceWarning, stacklevel=3)
    return SBCResult(pvalues=element_p, ranks=element_ranks, num_draws=int(num),
                     prior_draws={n: theta[n] for n in names}, idata=idata,
                     min_ess=np.asarray(ess), divergences=np.asarray(div).sum(axis=(1, 2)),
                     seconds=seconds, strategy=strategy)
