"""`probde.identifiability`: which parameters, and which combinations of them, the data
determine: the Fisher information and its eigen-directions at one point, and the profile
likelihood of every parameter.

The two answer different questions. The Fisher information is local (the curvature at
one point): its zero eigenvalues are the combinations that no data of this design can
determine (structural non-identifiability, such as a product `k1 * k2` where only the
product enters the predictions), its small ones the "sloppy" combinations. The profile
likelihoods are global along each parameter: a profile that stays within 1.92 of its
maximum on one side (practically non-identifiable) or on both (flat) says that these data
leave the parameter open there, however the others adjust.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import describe
from ..inference.likelihood import _kwargs as likelihood_kwargs
from ..inference.mode import laplace_gaussians
from ..model import Model
from . import coordinates, fisher, profiles
from .identifiability_report import plot, report

#: The profiles' default half-width in the analysis scale, at most, in prior standard
#: deviations (where the Fisher information gives none, or a wider one).
PRIOR_WIDTH = 3.0
#: Grid ends stay this fraction of the support's width (or of max(1, |bound|) for a
#: one-sided support) inside a bound, where the unconstrained coordinate is infinite.
BOUND_MARGIN = 1e-3


@dataclasses.dataclass(frozen=True)
class Identifiability:
    """The result of `probde.identifiability`. Arrays are numpy; everything indexed by
    coordinate follows `labels`.

    - `params`: the point where the Fisher information was taken (the posterior mode or the
      given values), as `{name: value}` like `probde.log_likelihood` takes;
    - `at`: `"posterior mode"` or `"given parameters"`;
    - `labels`: the scalar coordinates (`"k"`, `"z_init[0]"`); `scales`: `"log"` or
      `"natural"` for each; Fisher information, eigenvectors, standard errors and profile
      grids are on these scales;
    - `fisher`: the Fisher information matrix `(d, d)`; `information`: `"expected"`
      (assembled from the sensitivities) or `"observed"` (the negative Hessian of the
      log-likelihood), see `probde.checks.fisher`;
    - `eigenvalues` (largest first) and `eigenvectors` (columns, same order);
    - `sloppy`: a `probde.checks.fisher.Direction` for each eigenvalue below
      `sloppy_rtol` times the largest, the least determined first, named as a combination
      of the coordinates (`"0.707 log k1 - 0.707 log k2"`);
    - `standard_errors`: `sqrt(diag(fisher^-1))`, `inf` for a coordinate on a direction
      the data do not inform at all;
    - `mle`, `max_log_likelihood`: the maximum-likelihood point the profiles start from
      (any point of the ridge where the maximum is not unique) and its log-likelihood;
    - `profiles`: `{label: probde.checks.profiles.Profile}` for the profiled coordinates.

    `str(result)` (or `result.report()`) is a table; `result.plot(path)` draws the
    profiles and the eigen-spectrum.
    """

    params: dict
    at: str
    labels: tuple
    scales: tuple
    fisher: np.ndarray
    information: str
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    sloppy: tuple
    standard_errors: np.ndarray
    mle: dict
    max_log_likelihood: float
    profiles: dict
    sloppy_rtol: float

    def report(self) -> str:
        """The table of `str(result)`: per coordinate its scale, estimate, Fisher standard
        error, profile classification and 95% interval (in the parameter's own units),
        then the eigenvalues and the sloppy combinations."""
        return report(self)

    def __str__(self) -> str:
        return report(self)

    def plot(self, path=None):
        """One panel per profile (the drop from the maximum against the held value, the
        1.92 threshold dashed, the 95% interval shaded) and one of the eigenvalues
        relative to the largest (log scale, `sloppy_rtol` dashed). Returns the figure;
        saves it to `path` when given."""
        return plot(self, path)


def identifiability(model: Model, data, params: dict | None = None, *, profile=None,
                    scale="auto", num_points: int = 21, width: float = 4.0, bounds=None,
                    refine: bool = True, sloppy_rtol: float = 1e-6, max_steps: int = 256,
                    num_starts: int = 4, seed: int = 0) -> Identifiability:
    r"""An identifiability report of `model`'s parameters from `data`: the Fisher
    information at the posterior mode (or at `params`), its eigen-spectrum with the
    poorly determined combinations named, and the profile likelihood of each parameter
    classified as identified, practically non-identifiable or flat.

    All of it is computed on each parameter's *analysis scale*: the logarithm of a
    parameter whose prior lives on the positive half-line, the parameter itself otherwise
    (`scale` overrides). The Fisher information is the expected one, assembled from the
    forward sensitivities of the predictions, for independent Normal, LogNormal or Poisson
    observations, and the observed one (the negative Hessian of the log-likelihood)
    otherwise (`probde.checks.fisher`). The log-likelihood is `probde.log_likelihood`'s;
    the profiles maximise it (not the posterior) over all other parameters, noise and
    discrepancy hyperparameters included, starting from the maximum-likelihood estimate
    (searched for from the point above), and classify by the likelihood-ratio threshold
    $\chi^2_1(0.95)/2 = 1.92$: identified when the profile drops below it on both sides
    within the grid, practically non-identifiable on one side only, flat on neither
    (`probde.checks.profiles`).

    **Main arguments:**

    - `model`: a `probde.Model`; `data`: a `probde.TimeSeries` or a list of them.
    - `params`: where to take the Fisher information: a dict with exactly the model's
      latent variable names (as `probde.log_likelihood` takes), or `None` for the
      posterior mode (found by L-BFGS from `num_starts` random starting points, the best
      kept; in numpyro's unconstrained space, as `NUTS(init="map")` finds it).
    - `profile`: the parameters to profile: site names (all their coordinates) or
      coordinate labels (`"z_init[0]"`); `None` for all, `()` for none.

    **Other arguments:**

    - `scale`: `"auto"`, `"log"` or `"natural"`, or a dict of parameter name -> one of
      these.
    - `num_points`: grid points per profile (odd: the estimate is the middle one).
    - `width`: each grid's half-width in Fisher standard errors, at most 3 prior standard
      deviations (on the analysis scale), and always inside the prior's support.
    - `bounds`: a dict of coordinate label -> `(low, high)` in the parameter's own units,
      replacing that grid's range (the estimate must lie inside it).
    - `refine`: walk `num_points // 2` more points between the grid points around each
      crossing of the threshold (from the inner one), for the interval's ends; `False`
      halves the cost of an identified profile.
    - `sloppy_rtol`: eigenvalues below this times the largest are named in `sloppy`.
    - `max_steps`: BFGS steps at most for each point of a profile.
    - `num_starts`, `seed`: the mode search's number of starting points (drawn uniformly
      in (-2, 2) in the unconstrained space, infeasible ones redrawn) and their seed.

    **Returns:** an `Identifiability` (its `str` is a table).

    **Example:** only the product `k1 * k2` of two rates enters the predictions.

    ```python
    >>> import jax.numpy as jnp, numpy as np, numpyro.distributions as dist, probde
    >>> from probde.checks.identifiability import identifiability
    >>> decay = probde.ODE(lambda t, y, th: -th["k1"] * th["k2"] * y, state_names=("x",))
    >>> model = probde.Model(decay, {"k1": dist.LogNormal(0.0, 1.0),
    ...                              "k2": dist.LogNormal(0.0, 1.0)},
    ...                      jnp.array([1.0]), probde.noise.Normal(sigma=0.05), t0=0.0)
    >>> t = np.linspace(0.5, 3.0, 6)
    >>> data = probde.TimeSeries(t, np.exp(-0.5 * t), observables=("x",))
    >>> result = identifiability(model, data, {"k1": 1.0, "k2": 0.5}, num_points=9)
    >>> result.sloppy[0].combination
    '0.707 log k1 - 0.707 log k2'
    >>> [p.classification for p in result.profiles.values()]
    ['flat', 'flat']

    ```
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a probde.Model; got {describe(model)}")
    _check_options(num_points, width, sloppy_rtol, max_steps, num_starts, seed)
    if not isinstance(refine, bool):
        raise TypeError(f"refine must be True or False; got {describe(refine)}")
    prepared = model.prepare(data)
    kwargs = likelihood_kwargs(model)
    coords = coordinates.build(model, prepared, kwargs, scale)
    labels = _profiled(profile, coords)
    dtype = jnp.result_type(float)
    ranges = _check_bounds(bounds, coords, labels)
    if params is None:
        at, params = "posterior mode", _posterior_mode(model, prepared, kwargs, coords,
                                                       num_starts, seed)
    else:
        at, params = "given parameters", _check_params(params, coords)

    def ll_z(z):
        return coords.log_likelihood(coords.params(z))

    def ll_x(x):
        return coords.log_likelihood(coords.params_from_unconstrained(x))

    z0 = coords.analysis(params)
    matrix, kind, ll0 = fisher.fisher_information(coords, ll_z, prepared.mask, z0)
    if not np.isfinite(ll0):
        raise ValueError(
            f"the log-likelihood at the {at} is not finite (a failed solve or an impossible "
            "prediction); give params where the model fits, or raise Solver(max_steps=...)")
    values, vectors, sloppy = fisher.spectrum(matrix, coords.axis_labels, sloppy_rtol)
    se = fisher.standard_errors(values, vectors, dtype)

    sweep = profiles.sweeper(ll_x, dtype, max_steps)
    centre = num_points // 2
    # always num_points rows: one compilation
    to_x = jax.jit(jax.vmap(coords.unconstrained))
    x0 = to_x(jnp.broadcast_to(z0, (num_points, coords.size)))[0]
    x_mle, max_ll, converged_mle = profiles.maximise(sweep, x0, centre + 1)
    z_mle = np.asarray(jax.jit(coords.from_unconstrained)(jnp.asarray(x_mle)))
    results, failed, evaluated = {}, int(not converged_mle), 1

    def unconstrained(i, values):
        """Coordinate i's unconstrained values at `values` (the others at the MLE)."""
        rows = np.broadcast_to(z_mle, (num_points, coords.size)).copy()
        rows[:, i] = np.resize(values, num_points)
        return np.asarray(to_x(jnp.asarray(rows, dtype)))[:len(values), i]

    for label in labels:
        i = coords.labels.index(label)
        grid = _grid(coords, i, z_mle[i], se[i], width, ranges.get(label), centre)
        results[label], converged = _profile(sweep, coords, i, grid, unconstrained, centre,
                                             x_mle, max_ll, refine, float(z_mle[i]))
        failed += int(np.sum(~converged))
        evaluated += len(converged)
    if failed:
        warnings.warn(
            f"identifiability: {failed} of {evaluated} optimisations (the maximum-likelihood "
            f"search and the profiles' points) did not converge within max_steps={max_steps} "
            "(their values are lower bounds of the profile); raise max_steps, or narrow the "
            "grid with bounds=...",
            stacklevel=2)
    mle = {k: np.asarray(v) for k, v in coords.params(jnp.asarray(z_mle)).items()}
    return Identifiability(
        params={k: np.asarray(v) for k, v in params.items()}, at=at, labels=coords.labels,
        scales=coords.coordinate_scales, fisher=matrix, information=kind,
        eigenvalues=values, eigenvectors=vectors, sloppy=sloppy, standard_errors=se,
        mle=mle, max_log_likelihood=max_ll, profiles=results, sloppy_rtol=sloppy_rtol)


def _profile(sweep, coords, i, grid, unconstrained, centre, x_mle, max_ll, refine, estimate):
    """Coordinate i's profile on `grid` (refined around its threshold crossings) and the
    convergence flag of each of its points."""
    lls, xs, converged = profiles.profile(sweep, i, unconstrained(i, grid), centre, x_mle)
    kind, interval, top, brackets = profiles.classify(grid, lls, max_ll)
    if refine and brackets:
        extra = []
        for outer, inner in brackets:
            # centre + 1 points, the sweeps' compiled length; the last is grid[outer]
            fine = np.linspace(grid[inner], grid[outer], centre + 2)[1:]
            more = profiles.walk(sweep, i, unconstrained(i, fine), xs[inner])
            extra.append(tuple(a[:-1] for a in (fine, *more)))
        for more in extra:
            grid, lls, xs, converged = _merge((grid, lls, xs, converged), more)
        kind, interval, top, _ = profiles.classify(grid, lls, max_ll)
    label = coords.labels[i]
    return profiles.Profile(label, coords.coordinate_scales[i], grid, lls, converged, top,
                            estimate, kind, interval), converged


def _posterior_mode(model, prepared, kwargs, coords, num_starts, seed) -> dict:
    found = laplace_gaussians(model.numpyro_model(prepared), jax.random.PRNGKey(seed), kwargs,
                              2.0, num_starts)
    finite = [g for g in found if g.finite and np.isfinite(g.energy)]
    if not finite:
        raise ValueError(
            "identifiability: the posterior-mode search ended where the log density is not "
            "finite from every starting point; give params=... where the model fits, or "
            "raise num_starts")
    best = min(finite, key=lambda g: g.energy)
    x = jnp.asarray(best.loc, jnp.result_type(float))
    return {k: np.asarray(v) for k, v in jax.jit(coords.params_from_unconstrained)(x).items()}


def _check_params(params, coords) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of parameter values or None; got "
                        f"{describe(params)}")
    if set(params) != set(coords.names):
        missing = sorted(set(coords.names) - set(params))
        extra = sorted(set(params) - set(coords.names))
        raise ValueError(f"params must have exactly the keys {sorted(coords.names)}; "
                         f"missing {missing}, unexpected {extra}")
    out = {}
    for name, shape in zip(coords.names, coords.shapes, strict=True):
        value = np.asarray(params[name], dtype=float)
        if value.shape != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}; got {value.shape}")
        out[name] = value
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.asarray(coords.analysis(out))
    bad = ~(np.isfinite(z) & (z > coords.lower) & (z < coords.upper))
    if bad.any():
        i = int(np.argmax(bad))
        name = coords.site_of(coords.labels[i])
        raise ValueError(
            f"params[{name!r}] must be finite and inside its prior's support; got "
            f"{params[name]!r} ({coords.labels[i]} is outside)")
    return out


def _profiled(profile, coords) -> list[str]:
    if profile is None:
        return list(coords.labels)
    if isinstance(profile, str) or not isinstance(profile, (list, tuple)):
        raise TypeError(f"profile must be a list of parameter names, or None; got "
                        f"{describe(profile)}")
    out = []
    for name in profile:
        if name in coords.names:
            out += [lab for lab in coords.labels if coords.site_of(lab) == name]
        elif name in coords.labels:
            out.append(name)
        else:
            raise ValueError(
                f"profile names {name!r}, which is not a parameter of the model; its "
                f"parameters are {list(coords.names)} (coordinates {list(coords.labels)})")
    return list(dict.fromkeys(out))


def _check_bounds(bounds, coords, labels) -> dict:
    """`{label: (low, high)}` on the analysis scale."""
    if bounds is None:
        return {}
    if not isinstance(bounds, dict):
        raise TypeError(f"bounds must be a dict of coordinate label -> (low, high), or None; "
                        f"got {describe(bounds)}")
    out = {}
    for label, pair in bounds.items():
        if label not in labels:
            raise ValueError(f"bounds names {label!r}, which is not a profiled coordinate; "
                             f"they are {labels}")
        low, high = (float(v) for v in pair)
        log = coords.coordinate_scales[coords.labels.index(label)] == "log"
        if not low < high or (log and low <= 0):
            raise ValueError(f"bounds[{label!r}] must be (low, high) with low < high"
                             f"{' and low > 0' if log else ''}; got {pair!r}")
        out[label] = (math.log(low), math.log(high)) if log else (low, high)
    return out


def _check_options(num_points, width, sloppy_rtol, max_steps, num_starts, seed) -> None:
    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not integer(num_points) or num_points < 5 or num_points % 2 == 0:
        raise ValueError("num_points must be an odd integer of at least 5 (the estimate is "
                         f"the middle point); got {num_points!r}")
    for name, v in (("width", width), ("sloppy_rtol", sloppy_rtol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a positive finite number; got {v!r}")
    for name, v in (("max_steps", max_steps), ("num_starts", num_starts)):
        if not integer(v) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    if not integer(seed):
        raise TypeError(f"seed must be an integer; got {describe(seed)}")


def _merge(profile, extra):
    """The arrays `(grid, values, points, converged)` of a profile with more points,
    sorted by the grid."""
    merged = [np.concatenate([a, b]) for a, b in zip(profile, extra, strict=True)]
    order = np.argsort(merged[0], kind="stable")
    return tuple(a[order] for a in merged)


def _grid(coords, i, centre_value, se, width, given, centre) -> np.ndarray:
    """The grid of coordinate `i`: `centre` points each side of the estimate, out to
    `width` standard errors (at most `PRIOR_WIDTH` prior standard deviations; one unit of
    the analysis scale where neither is finite) or to the `given` range, inside the
    support."""
    if given is not None:
        low, high = given
        if not low < centre_value < high:
            log = coords.coordinate_scales[i] == "log"
            raise ValueError(
                f"bounds[{coords.labels[i]!r}] must contain the maximum-likelihood estimate "
                f"{math.exp(centre_value) if log else centre_value:.6g}; got "
                f"({math.exp(low) if log else low:.6g}, {math.exp(high) if log else high:.6g})")
    else:
        cap = PRIOR_WIDTH * coords.prior_sd[i]
        half = min(width * se, cap) if np.isfinite(cap) else width * se
        half = half if np.isfinite(half) and half > 0 else 1.0
        low, high = centre_value - half, centre_value + half
    lo, hi = coords.lower[i], coords.upper[i]
    span = hi - lo if np.isfinite(hi - lo) else None
    if np.isfinite(lo):
        low = max(low, lo + BOUND_MARGIN * (span or max(1.0, abs(lo))))
    if np.isfinite(hi):
        high = min(high, hi - BOUND_MARGIN * (span or max(1.0, abs(hi))))
    low, high = min(low, centre_value), max(high, centre_value)
    return np.concatenate([np.linspace(low, centre_value, centre + 1)[:-1],
                           np.linspace(centre_value, high, centre + 1)])
