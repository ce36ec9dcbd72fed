"""Inference methods as option objects: the extension point `AbstractMethod`, the chain
options shared by the MCMC methods (`_ChainOptions`, `sharded_chains`) and `probde.NUTS`.
`SVI`, `Laplace` and `RandomWalkMetropolis` have their own modules."""

from __future__ import annotations

import abc
import dataclasses
import pathlib
import warnings

import jax
import numpy as np
from numpyro.infer import MCMC, init_to_median

from . import chunks, path_screen, restart
from ._options import check_init_radius, is_real, positive_int
from .convergence import ALL_CHECKS, ConvergenceWarning
from .failures import REJECTED_TOTAL, CountingNUTS, run_total
from .initialisation import NO_START, best_uniform_starts, init_strategy
from .mode import laplace_starts

_CHAIN_METHODS = ("auto", "sequential", "parallel", "vectorized", "sharded")


def sharded_chains(num_chains: int, devices=None):
    """A numpyro `chain_method` that shards the chains over devices with `jax.sharding`.

    The chains are split into equal groups, one per device of a one-axis mesh named
    `"chain"` (as many devices as divide `num_chains`); each device runs its group as
    vectorised chains (`jax.vmap`; no vmap for a group of one, where it would only add a
    batched loop predicate), inside one `jax.jit(jax.shard_map(...))` program. Chains never
    communicate, so the program needs no collectives. numpyro's `pmap` ("parallel") needs
    one chain per device; this needs any multiple of the devices, and the same code runs on
    one CPU, several GPUs, or, under `jax.distributed`, every device of several hosts
    (`jax.devices()` lists all of them).
    """
    from jax.sharding import PartitionSpec

    mesh = chunks.chain_mesh(num_chains, devices)
    per_device = num_chains // mesh.size
    spec = PartitionSpec("chain")

    def chain_method(fn):
        if per_device == 1:
            def local(args):
                one = fn(jax.tree.map(lambda x: x[0], args))
                return jax.tree.map(lambda x: x[None], one)
        else:
            local = jax.vmap(fn)
        return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,), out_specs=spec,
                                     check_vma=False))

    chain_method.mesh = mesh
    return chain_method

# numpyro's per-transition fields and the ArviZ sample_stats names they become.
_EXTRA_FIELDS = {
    "diverging": "diverging",
    "potential_energy": "lp",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
    "energy": "energy",
    "adapt_state.step_size": "step_size",
    "rejected": "rejected",
}


class AbstractMethod(abc.ABC):
    """Extension point for inference methods used by `probde.infer`.

    `needs_gradient`: whether the method differentiates the log density (a random,
    non-differentiable likelihood such as the particle filter's is refused then)."""

    needs_gradient = True
    # The convergence checks `probde.infer` runs on the draws (`convergence.ALL_CHECKS`
    # names them); none for a method whose draws are independent (a variational fit).
    convergence_checks: tuple[str, ...] = ()

    def check_model(self, model, data) -> None:
        """Refuse a model the method cannot fit (`model` is a `probde.Model` and `data`
        its prepared data, or both `None` for a numpyro model function); by default
        every model is accepted."""

    def run_options(self, model, data) -> dict:
        """Keyword arguments for `run` that come from the `probde.Model` and its prepared
        `data` (`probde.infer` passes them; none for a numpyro model function); by
        default none."""
        return {}

    @abc.abstractmethod
    def run(self, model_fn, key, *, progress_bar: bool, model_kwargs: dict):
        """Run inference; return `(samples, sample_stats)`, both dicts of arrays with
        leading dims `(chain, draw)`, or `(samples, sample_stats, groups)` with more
        DataTree groups. A method that counts the model evaluations it rejected
        (`failures.py`) puts the run's totals in `sample_stats["rejected_total"]`, one per
        chain (`probde.infer` reads and removes it); without it `solver_failures` is
        `None`. Text notes for `idata.sample_stats.attrs` go in
        `sample_stats["run_notes"]` (`restart.NOTES`), a dict, also removed."""


def numpyro_chain_method(name: str, num_chains: int):
    """numpyro's `chain_method` for probde's name of it (`"sharded"`: `sharded_chains`)."""
    if name == "sharded" and num_chains > 1:
        return sharded_chains(num_chains)
    return "sequential" if name == "sharded" else name


class _ChainOptions:
    """Checks and chain placement shared by the MCMC methods (NUTS, random-walk
    Metropolis): fields `num_chains`, `num_warmup`, `num_samples`, `thinning`,
    `target_accept`, `chain_method`, `init_radius`."""

    _POSITIVE_INTS = ("num_chains", "num_samples", "thinning")

    def _check_chain_options(self):
        for name in self._POSITIVE_INTS:
            positive_int(name, getattr(self, name))
        warmup = self.num_warmup
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            raise ValueError(f"num_warmup must be a non-negative integer; got {warmup!r}")
        if not is_real(self.target_accept) or not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1); got {self.target_accept!r}")
        if not isinstance(self.chain_method, str) or self.chain_method not in _CHAIN_METHODS:
            raise ValueError(
                f"chain_method must be one of {_CHAIN_METHODS}; got {self.chain_method!r}"
            )
        check_init_radius(self.init_radius)

    def _placement(self, chain_method, progress_bar) -> dict:
        """numpyro `MCMC`'s `chain_method` and `progress_bar` for these options (sharded
        chains run inside one compiled program, without a progress bar)."""
        name = chain_method or self.resolved_chain_method()
        return {"chain_method": numpyro_chain_method(name, self.num_chains),
                "progress_bar": progress_bar and name != "sharded"}

    def resolved_chain_method(self) -> str:
        """The chain method used on this machine."""
        if self.chain_method != "auto":
            return self.chain_method
        if self.num_chains > 1 and jax.local_device_count() >= self.num_chains:
            return "parallel"
        return "sequential"


@dataclasses.dataclass(frozen=True)
class NUTS(_ChainOptions, AbstractMethod):
    """The No-U-Turn sampler (numpyro's), with windowed step-size and mass-matrix adaptation.

    **Main arguments:**

    - `num_chains`, `num_warmup`, `num_samples`: chains, warmup (adaptation) iterations
      and kept draws per chain.
    - `target_accept`: target mean acceptance probability of the step-size adaptation;
      raise it (0.9, 0.95) when there are divergences.
    - `dense_mass`: adapt a dense mass matrix (helps strongly correlated posteriors).

    **Other arguments:**

    - `chain_method`: `"sequential"`, `"parallel"` (one chain per JAX device; on CPU set
      `numpyro.set_host_device_count(n)` before JAX starts), `"vectorized"` (all chains
      in one vmapped program; suits accelerators), `"sharded"` (the chains split evenly
      over the devices with `jax.sharding`, vectorised on each: several GPUs, or many
      chains per device), or `"auto"` (default): parallel when there are
      as many devices as chains, else sequential.
    - `max_tree_depth`: NUTS doubles the trajectory at most this many times.
    - `thinning`: keep every `thinning`-th draw.
    - `init`: where the chains start. `"uniform"` (default): at points drawn uniformly in
      (-init_radius, init_radius) in the unconstrained space; infeasible points (failed
      solves, non-finite density) are redrawn, so every chain starts from a feasible point.
      `"map"`: first find the posterior mode by optimisation (one L-BFGS search with a
      line search per chain, each started as above; the mode with the highest density is
      kept), then start each chain at its own draw from the Laplace approximation there (at the mode where the Hessian is not positive definite; as
      with `"uniform"`, with a warning, where the search ended at a failed solve). Warmup then begins in the bulk of the posterior
      rather than wandering in from the prior's far tails, which saves time on models
      whose solves are slow or stiff far from the data; the chains start less
      dispersed, so R-hat has less to go on (a mode the optimiser did not find stays
      unexplored). On a posterior with a minor mode that uniform starts may fall into
      (the flip-flop of absorption and elimination rates in the theophylline tutorial),
      it starts every chain in the major one. On lynx-hare, over ten seeds, uniform starts
      left a chain far below the others through sampling once (R-hat 1.6, before
      `restart_stuck` below); with `"map"` all ten runs converged, for about 5 s more a
      run (`benchmarks/RESULTS.md`). It is not the default because a mode can mislead: a
      hierarchical model's density has no maximum (it grows without bound as a group
      scale shrinks), and neither has a latent path's (`probde.LatentPath`: it grows as
      the observation noise shrinks with the path through the data; on the sparse
      FitzHugh-Nagumo data the chains started and stayed at a noise sd of 0.0002 against
      0.1, so NUTS warns there).
      `"median"`: at the prior median of every latent variable (numpyro's
      `init_to_median`, the median of 15 prior draws per chain): for priors far from the
      unconstrained space's origin (a noise sd of 0.01 is e^-4.6 there; uniform draws
      start it between e^-2 and e^2), and for `probde.LatentPath`, whose chains then start
      on the drift's own path (increments 0). The chains start close together, so R-hat
      has less to go on.
    - `init_radius`: the half-width of the uniform draws.
    - `init_candidates`: with `init="uniform"`, each chain starts at the best (highest log
      density) of this many feasible uniform draws (default 8; 1 is numpyro's single
      draw). One draw can land deep in the prior's tail, where warmup shrinks the step
      size to nothing: on lynx-hare one chain in forty started at a log density of
      -64,000 (the posterior sits at -137) and was still there after sampling. The best
      of 8 costs one vectorised feasibility search. It favours the higher of several
      modes at the start (the screen below does the same later).
    - `restart_stuck`: guards against chains that stay far below the others, twice.
      *Screen:* with uniform starts, at least 2 chains and 300 warmup iterations, the
      first 75 iterations of the warmup run on their own;
      a chain whose mean log density over its last 25 iterations is far below the best
      chain's (by more than 10 nats and 5 within-chain sds: `probde.inference.restart.
      far_below`) takes another chain's state (position, step size, adaptation), and the
      rest of the warmup goes on from the chains' states, its adaptation uninterrupted;
      `idata.sample_stats.attrs["screened"]` records a move (restarting the adaptation
      after the screen, as before, cost 4% more warmup gradients than Stan's on
      lynx-hare). Good starts are not enough: a chain that starts where nearby solves fail sees every trajectory end in a rejected proposal, and its
      step size shrinks to 1e-5 (lynx-hare, one seed in ten with the best-of-8 starts,
      from a log density of -800; `benchmarks/RESULTS.md`). *Restart:* after sampling,
      when a chain's mean log density is still far below the best chain's, NUTS runs
      warmup and sampling once more,
      every chain starting from its own final point and each such chain from another
      chain's, keeps only the second run, warns (`probde.ConvergenceWarning`), and
      records what it saw in `idata.sample_stats.attrs["restarted"]`. With `True`
      (default) the ten lynx-hare seeds of `benchmarks/lynx_hare_seeds.py` all converged
      in 17-24 s; without the screen or the best-of-8 starts one took 162 s, its stuck
      chain's maximum-depth trees paid before the restart. Both trust density: a minor
      mode holding real probability at a much lower density (far wider than the main
      one) would lose its chain; set `False` (and `init_candidates=1`) to see every chain
      where it settled. With a latent path (`probde.LatentPath`), whose joint density
      spreads too widely within one mode to tell modes apart, both judge the chains by
      the density of their parameters alone (a particle filter's estimate), the screen
      at the ends of the adaptation windows in the first half of the warmup, whatever
      the start (`probde.LatentPath`, `screen_particles`).

    **Example:**

    ```python
    >>> import probde
    >>> probde.NUTS(num_chains=4, num_warmup=500, num_samples=500).num_chains
    4

    ```
    """

    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    target_accept: float = 0.8
    dense_mass: bool = False
    chain_method: str = "auto"
    max_tree_depth: int = 10
    thinning: int = 1
    init_radius: float = 2.0
    init: str = "uniform"
    init_candidates: int = 8
    restart_stuck: bool = True

    _POSITIVE_INTS = ("num_chains", "num_samples", "max_tree_depth", "thinning",
                      "init_candidates")
    convergence_checks = ALL_CHECKS

    def __post_init__(self):
        self._check_chain_options()
        if not isinstance(self.init, str) or self.init not in ("uniform", "median", "map"):
            raise ValueError(f"init must be 'uniform', 'median' or 'map'; got {self.init!r}")
        if not isinstance(self.dense_mass, bool):
            raise TypeError(f"dense_mass must be True or False; got {self.dense_mass!r}")
        if not isinstance(self.restart_stuck, bool):
            raise TypeError(f"restart_stuck must be True or False; got {self.restart_stuck!r}")

    def check_model(self, model, data) -> None:
        """Warn when `init="map"` meets a latent path (`probde.LatentPath`): the joint
        density of parameters and path has no useful mode. It grows as the observation
        noise shrinks with the path running through the data, so the search ends there and
        the chains start, and stay, in that corner. Measured on the sparse FitzHugh-Nagumo
        data (`benchmarks/RESULTS.md`): sigma 0.00018 against a truth of 0.1, R-hat 2.3."""
        if (self.init == "map" and model is not None and model.sde is not None
                and model.likelihood.latent_path):
            warnings.warn(
                "NUTS(init='map') with likelihood=probde.LatentPath: the joint mode of the "
                "parameters and the path lies where the observation noise goes to zero and "
                "the path runs through the data, so the chains start in that corner and tend "
                "to stay there; use init='uniform' (the default) or 'median'",
                skip_file_prefixes=(str(pathlib.Path(__file__).parents[1]),))

    def kernel(self, model_fn, warmup_schedule: int | None = None) -> CountingNUTS:
        """The numpyro NUTS kernel these options describe, for `model_fn` (numpyro's NUTS,
        counting rejected evaluations: `failures.CountingNUTS`; `warmup_schedule`: the
        whole warmup's length when an `MCMC` runs only part of it)."""
        return CountingNUTS(
            model_fn,
            warmup_schedule=warmup_schedule,
            # Not numpyro's `find_heuristic_step_size` (Stan's start: double or halve the
            # step size until one leapfrog step's acceptance crosses 0.8): on lynx-hare it
            # saved 3% of the warmup's gradients but cost 2 s more tracing a call (its
            # search traces the gradient once more in each program; `benchmarks/RESULTS.md`).
            target_accept_prob=self.target_accept,
            dense_mass=self.dense_mass,
            max_tree_depth=self.max_tree_depth,
            init_strategy=(init_to_median if self.init == "median"
                           else init_strategy(self.init_radius, model_fn)),
        )

    def mcmc(
        self, model_fn, *, progress_bar: bool = False, chain_method: str | None = None,
        after_screen: int = 0,
    ) -> MCMC:
        """The numpyro `MCMC` object `run` uses (for users and benchmarks that need phases).
        `after_screen`: the warmup iterations the screen already ran (`_screen`); this
        `MCMC` then runs the rest of the warmup, on the adaptation schedule of the whole
        one, resuming the screened chains' states passed as `init_params`."""
        return MCMC(
            self.kernel(model_fn, warmup_schedule=self.num_warmup if after_screen else None),
            num_warmup=self.num_warmup - after_screen,
            num_samples=self.num_samples,
            num_chains=self.num_chains,
            thinning=self.thinning,
            **self._placement(chain_method, progress_bar),
        )

    def run_options(self, model, data) -> dict:
        """For a latent path (`probde.LatentPath` with `screen_particles`), the chains'
        score by the density of their parameters (`path_screen.scorer`), which the
        stuck-chain screen and restart then use (`restart_stuck`)."""
        if not (self.restart_stuck and model is not None and model.sde is not None
                and model.likelihood.latent_path and model.likelihood.screen_particles):
            return {}
        return {"chain_score": path_screen.scorer(model, data,
                                                  model.likelihood.screen_particles)}

    def run(self, model_fn, key, *, progress_bar, model_kwargs, chain_score=None):
        chain_method = self._chain_method_here()
        key, init_params = self._starts(model_fn, key, model_kwargs)
        try:
            return self._run_chunks(model_fn, key, init_params, chain_method, progress_bar,
                                    model_kwargs, chain_score)
        except RuntimeError as err:
            _no_start(err, self.init_radius)
        except ValueError as err:
            # diffrax's reverse adjoint cannot be differentiated under pmap with some
            # jax/equinox versions (diffrax issue #765): "Closure-converted function ..."
            # for an explicit solver, and lineax's "pytree does not match out_structure"
            # from the Newton solves of an implicit one. When the chain method was our
            # choice, fall back to sequential chains rather than fail.
            if self.chain_method != "auto" or chain_method != "parallel" or not any(
                m in str(err) for m in ("Closure-converted function",
                                        "pytree does not match out_structure")
            ):
                raise
            warnings.warn(
                "parallel chains failed to compile with this model's adjoint "
                "(diffrax's reverse adjoint under pmap); running the chains sequentially. "
                "Use probde.Solver(adjoint=probde.ForwardSensitivity()) to run them in parallel "
                "(with an implicit solver that costs several times more per gradient), or "
                "NUTS(chain_method='sequential') to skip this attempt",
                skip_file_prefixes=(str(pathlib.Path(__file__).parents[1]),),
            )
            return self._run_chunks(model_fn, key, init_params, "sequential", progress_bar,
                                    model_kwargs, chain_score)

    def _chain_method_here(self) -> str:
        """`resolved_chain_method`, sequential where numpyro would fall back to it (fewer
        devices than parallel chains, with numpyro's warning)."""
        name = self.resolved_chain_method()
        if name == "parallel" and jax.local_device_count() < self.num_chains:
            warnings.warn(
                f"There are not enough devices to run parallel chains: expected "
                f"{self.num_chains} but got {jax.local_device_count()}. Chains will be "
                "drawn sequentially.", skip_file_prefixes=(str(pathlib.Path(__file__).parents[1]),))
            return "sequential"
        return name

    def _run_chunks(self, model_fn, key, init_params, chain_method, progress_bar,
                    model_kwargs, chain_score=None):
        """Warmup (screened: `_warmup`) and sampling, with a restart when a chain ended
        far below the others, on one compiled program (`chunks.Chunks`); `(samples,
        stats)` as `run` returns them. `chain_score` (`run_options`): the chains' density
        of the parameters alone, for a latent path."""
        runner = chunks.Chunks(self.kernel(model_fn), self.num_chains, self.num_warmup,
                               chain_method, model_kwargs)
        progress = chunks.Progress(progress_bar, self.num_warmup + self.num_samples,
                                   self.num_chains)
        notes = {}
        try:
            run, state, record = self._warmup_and_sample(runner, progress, key, init_params,
                                                         notes, chain_score)
            rejected = run_total(state)
            below, note = self._stuck(-record["potential_energy"], state, chain_score, key)
            if below.any():
                source = restart.donors(below)
                notes["restarted"] = note(source)
                warnings.warn(notes["restarted"], ConvergenceWarning,
                              skip_file_prefixes=(str(pathlib.Path(__file__).parents[1]),))
                progress.extend(self.num_warmup + self.num_samples)
                # a whole warmup again, from positions (no screen before it)
                run, state, record = self._warmup_and_sample(
                    runner, progress, jax.random.fold_in(key, 1),
                    restart.positions(state.z, source), notes, chain_score, screen=False)
                rejected = rejected + run_total(state)
        finally:
            progress.close()
        thin = chunks.thinned(self.num_samples, self.thinning)
        stats = {_EXTRA_FIELDS[k]: v[:, thin] for k, v in record.items()}
        stats["lp"] = -stats["lp"]
        # numpyro reports leapfrog steps; a tree of depth d has at most 2**d - 1 of them.
        stats["tree_depth"] = np.ceil(np.log2(stats["n_steps"] + 1)).astype(np.int32)
        stats["reached_max_treedepth"] = stats["n_steps"] >= 2**self.max_tree_depth - 1
        stats[REJECTED_TOTAL] = rejected
        stats[restart.NOTES] = notes
        return run.samples(self.thinning), stats

    def _stuck(self, lp, state, chain_score, key):
        """After sampling: which chains ended far below the others (`restart.far_below`
        of their log densities `lp`, chain x draw; with `chain_score`, also of their
        final points' scores), and the note for a restart, a function of the donors."""
        if not self.restart_stuck:
            return np.zeros(1, dtype=bool), None
        below = restart.far_below(lp)
        if chain_score is None or below.any():
            return below, lambda source: restart.note(lp, below, source)
        scores = chain_score(state.z, jax.random.fold_in(key, 2))
        below = restart.below_best(scores)
        return below, lambda source: restart.path_note(scores, below, source)

    def _warmup_and_sample(self, runner, progress, key, init_params, notes, chain_score=None,
                           screen=True):
        """One run from `init_params`: the warmup (`_warmup`), then sampling. `(run, last
        state, the sampling's records)`."""
        run, state, _ = self._warmup(runner, progress, key, init_params, notes, chain_score,
                                     screen)
        state, record = run.phase(state, self.num_samples, "sample", keep=True)
        return run, state, record

    def _warmup(self, runner, progress, key, init_params, notes, chain_score=None,
                screen=True):
        """The warmup of one run from `init_params`, screened when `screen`: a chain far
        below the others at a screening point takes another chain's state (position,
        adaptation). Without `chain_score` the one point is the end of the first
        `_screen_length()` iterations, judged by `restart.far_below` over
        `restart.screen_window`; with it (a latent path), the points are
        `restart.path_screen_points`, judged by `restart.below_best` of the scores.
        `(run, last state, the records of each phase run)`; `notes` gets a note for each
        move. (Also what `benchmarks/end_to_end.py` times as the warmup window.)"""
        run = chunks.Run(runner, progress)
        state = runner.start(key, init_params)
        points = self._screen_points(chain_score is not None) if screen else []
        records, done = [], 0
        for point in points:
            state, record = run.phase(state, point - done, "warmup")
            records.append(record)
            done = point
            if chain_score is None:
                window = restart.screen_window(-record["potential_energy"])
                below = restart.far_below(window)
            else:
                scores = chain_score(state.z, jax.random.fold_in(key, point))
                below = restart.below_best(scores)
            if below.any():
                source = restart.donors(below)
                note = (restart.screen_note(window, below, source, point) if chain_score is None
                        else restart.path_screen_note(scores, below, source, point))
                notes["screened"] = "; ".join(filter(None, [notes.get("screened"), note]))
                state = chunks.placed_like(restart.states(state, source), state)
        state, record = run.phase(state, self.num_warmup - done, "warmup")
        records.append(record)
        return run, state, [r for r in records if r is not None]

    def _starts(self, model_fn, key, model_kwargs):
        """`(key, init_params)`: the key left for sampling and the chains' starting points
        (`MCMC.run`'s `init_params`; `None` for numpyro's own, one draw of the init
        strategy per chain)."""
        if self.init == "map":
            key, key_map = jax.random.split(key)
            return key, laplace_starts(model_fn, key_map, self.num_chains, model_kwargs,
                                       self.init_radius, num_searches=self.num_chains)
        if self.init == "uniform" and self.init_candidates > 1:
            try:
                return key, best_uniform_starts(model_fn, jax.random.fold_in(key, 2),
                                                self.num_chains, self.init_candidates,
                                                model_kwargs, self.init_radius)
            except RuntimeError as err:
                _no_start(err, self.init_radius)
        return key, None

    def _screen_length(self) -> int:
        """Iterations of the screening warmup (`restart.screen_length`): only for uniform
        starts, which can land far from the posterior; `init="map"` and `"median"` start
        every chain near its bulk or at one point."""
        if not self.restart_stuck or self.init != "uniform":
            return 0
        return restart.screen_length(self.num_warmup, self.num_chains)

    def _screen_points(self, by_score: bool) -> list[int]:
        """The warmup iterations after which the chains are screened: with scores of the
        parameters alone (a latent path, any start: its chains settle in minor modes
        during warmup, not only at the start), `restart.path_screen_points`; else the end
        of the screening warmup, if any."""
        if by_score:
            if not self.restart_stuck:
                return []
            return restart.path_screen_points(self.num_warmup, self.num_chains)
        length = self._screen_length()
        return [length] if length else []


def _no_start(err: RuntimeError, init_radius: float):
    """Re-raise numpyro's "Cannot find valid initial parameters" with what to check."""
    if NO_START not in str(err):
        raise err
    raise RuntimeError(
        "NUTS found no feasible starting point: at every one of 100 points drawn "
        f"uniformly in (-{init_radius}, {init_radius}) in the unconstrained "
        "space the solve failed, a prediction was impossible for the noise model, or "
        "the log density or its gradient was not finite. Check the priors and "
        "initial_state against the data's scale, raise Solver(max_steps=...), or use "
        "a stiff solver such as diffrax.Kvaerno5()"
    ) from err
