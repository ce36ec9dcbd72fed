"""Convergence checks after an MCMC run: rank-normalised split R-hat, bulk and tail ESS,
E-BFMI, divergences, tree-depth saturation and stuck chains.

The estimators are ArviZ's (`az.rhat`, `az.ess`, `az.bfmi`). What is written here is
what ArviZ's own `diagnose` lacks for a calibration tool: the failing parameters named
element by element, a chain that sits in a different mode found and named, remedies in
terms of probde's options, one warning per run, and the figures kept in the result's
`sample_stats` attributes (so a saved result carries them).
"""

from __future__ import annotations

import dataclasses
import warnings

# ArviZ's statistics package, not `arviz`: that also imports arviz_plots and matplotlib's
# pyplot (about 0.5 s of every `import probde`), which no check needs.
import arviz_stats
import numpy as np
import xarray as xr

# Thresholds (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021; Betancourt 2016; the
# values CmdStan's `diagnose` uses).
RHAT_MAX = 1.01
ESS_PER_CHAIN = 100  # bulk and tail ESS below 100 x chains fail
EBFMI_MIN = 0.3
# A chain "sits apart" when its mean log density differs from the median of the other
# chains' means by more than one within-chain standard deviation of the log density and
# by more than STUCK_Z standard errors of that difference (the standard errors from each
# chain's ESS of the log density), or when a parameter whose R-hat fails has its chain
# mean more than STUCK_Z pooled within-chain standard deviations from the others'.
STUCK_Z = 4.0
# At most this many parameters (elements) are named in a warning; `diagnose` lists all.
MOST = 5

ALL_CHECKS = ("rhat", "ess", "ebfmi", "divergences", "treedepth", "stuck")


class ConvergenceWarning(UserWarning):
    """An MCMC run whose draws fail a convergence check (R-hat, ESS, E-BFMI, divergences,
    tree depth, a stuck chain): its posterior summaries may be wrong. `result.diagnose()`
    prints the full report."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One convergence check: its `name`, whether it `passed`, a one-line `summary`,
    the `detail` lines (every failing parameter or chain) and the `remedy`."""

    name: str
    passed: bool
    summary: str
    detail: tuple[str, ...] = ()
    remedy: str = ""


@dataclasses.dataclass(frozen=True)
class ConvergenceReport:
    """The convergence checks of one MCMC run (`InferenceResult.diagnose()`).

    `checks`: the `Check`s that apply to the method (random-walk Metropolis has no
    energy, divergences or tree depth); `ok`: all passed; `failed`: those that did not;
    `stuck_chains`: the indices of the chains that sit apart from the others. `str()`
    gives the full report."""

    checks: tuple[Check, ...]
    num_chains: int
    num_draws: int
    stuck_chains: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def __str__(self) -> str:
        lines = [f"Convergence report: {self.num_chains} chain(s) x {self.num_draws} draws"]
        for c in self.checks:
            lines.append(f"\n{c.name}: {'ok' if c.passed else 'FAILED'} - {c.summary}")
            lines += [f"  {d}" for d in c.detail]
            if not c.passed and c.remedy:
                lines.append(f"  What to do: {c.remedy}")
        lines.append("\nAll checks passed." if self.ok else
                     f"\n{len(self.failed)} check(s) failed: the posterior summaries may be wrong.")
        return "\n".join(lines)

    def warning_text(self) -> str:
        """The warning `probde.infer` gives for the failed checks (short: at most
        `MOST` names per check)."""
        parts = []
        for c in self.failed:
            text = f"{c.name}: {c.summary}"
            if c.remedy:
                text += f". {c.remedy}"
            parts.append(text)
        return ("the MCMC draws fail convergence checks, so the posterior summaries may be "
                "wrong:\n- " + "\n- ".join(parts)
                + "\nresult.diagnose() prints the full report")

    def attrs(self) -> dict:
        """The report as netCDF-safe attributes for `sample_stats` (`convergence_ok` 1/0,
        `convergence_failed`: the failed checks' names, `convergence_<check>`: each
        check's summary, `stuck_chains`)."""
        out = {"convergence_ok": int(self.ok),
               "convergence_failed": ", ".join(c.name for c in self.failed)}
        for c in self.checks:
            out["convergence_" + c.name.lower().replace(" ", "_").replace("-", "")] = c.summary
        out["stuck_chains"] = ", ".join(str(i) for i in self.stuck_chains)
        return out


def _elements(dataset) -> list[tuple[str, str, dict]]:
    """`(label, variable, selection)` for every scalar element of every variable of
    `dataset` (chain/draw already reduced): e.g. `("k", "k", {})`,
    `("ka[3]", "ka", {"experiment": 3})` (the label shows coordinate values, the
    selection holds positions)."""
    out = []
    for name, var in dataset.data_vars.items():
        if var.ndim == 0:
            out.append((name, name, {}))
            continue
        for idx in np.ndindex(var.shape):
            sel = {d: var[d].values[i] if d in var.coords else i
                   for d, i in zip(var.dims, idx, strict=True)}
            inside = ", ".join(f"{d}={v}" for d, v in sel.items()) if len(sel) > 1 else str(
                next(iter(sel.values())))
            out.append((f"{name}[{inside}]", name, dict(zip(var.dims, idx, strict=True))))
    return out


def _values(dataset) -> list[tuple[str, float]]:
    """`(label, value)` for each element of a reduced dataset."""
    return [(label, float(dataset[name].values[tuple(sel.values())]) if sel
             else float(dataset[name].values))
            for label, name, sel in _elements(dataset)]


def _listed(pairs, fmt, most=None):
    pairs = pairs if most is None else pairs[:most]
    return ", ".join(f"{label} ({fmt.format(v)})" for label, v in pairs)


def _more(pairs, most):
    return f" and {len(pairs) - most} more" if len(pairs) > most else ""


def _halves(posterior):
    """One chain as two: its first and second halves (ArviZ's R-hat needs two chains;
    split R-hat compares the halves of each chain anyway)."""
    half = posterior.sizes["draw"] // 2
    out = {}
    for name, var in posterior.data_vars.items():
        x = np.asarray(var.values)[:, :2 * half]
        out[name] = (var.dims, x.reshape((2, half) + x.shape[2:]))
    return xr.Dataset(out)


def _rhat_check(posterior, most):
    one = posterior.sizes["chain"] == 1
    rhat = _values(arviz_stats.rhat(_halves(posterior) if one else posterior))
    bad = sorted([(k, v) for k, v in rhat if not v <= RHAT_MAX], key=lambda p: -np.nan_to_num(
        p[1], nan=np.inf))
    worst = max((v for _, v in rhat if np.isfinite(v)), default=np.nan)
    of = " (one chain: of its two halves)" if one else ""
    if not bad:
        return Check("R-hat", True, f"max {worst:.3f} (threshold {RHAT_MAX}){of}"), bad
    summary = (f"{len(bad)} parameter(s) above {RHAT_MAX}{of}: "
               f"{_listed(bad, '{:.3g}', most)}{_more(bad, most)}")
    remedy = ("The chains disagree: run longer (more num_warmup and num_samples), and see "
              "the stuck-chain check; for a posterior with several modes start the chains "
              "at the major one with NUTS(init='map'), or report the modes")
    return Check("R-hat", False, summary, tuple(f"{k}: {v:.4g}" for k, v in bad),
                 remedy), bad


def _ess_check(posterior, kind, num_chains, most):
    ess = _values(arviz_stats.ess(posterior, method=kind))
    need = ESS_PER_CHAIN * num_chains
    bad = sorted([(k, v) for k, v in ess if not v >= need], key=lambda p: np.nan_to_num(
        p[1], nan=-1.0))
    name = f"{kind} ESS"
    least = min((v for _, v in ess if np.isfinite(v)), default=np.nan)
    if not bad:
        return Check(name, True, f"min {least:.0f} (needed {need}: 100 per chain)")
    summary = (f"{len(bad)} parameter(s) below {need} (100 per chain): "
               f"{_listed(bad, '{:.0f}', most)}{_more(bad, most)}")
    what = "the tails (the 5% and 95% quantiles)" if kind == "tail" else "the centre"
    remedy = (f"Too few effective draws to estimate {what} reliably: raise num_samples "
              "(and num_warmup), or reparameterise (NUTS(dense_mass=True) for correlated "
              "parameters)")
    return Check(name, False, summary, tuple(f"{k}: {v:.0f}" for k, v in bad), remedy)


def _ebfmi_check(idata):
    values = np.atleast_1d(np.asarray(arviz_stats.bfmi(idata)["energy"].values, dtype=float))
    low = [(i, v) for i, v in enumerate(values) if not v >= EBFMI_MIN]
    detail = tuple(f"chain {i}: {v:.3f}" for i, v in enumerate(values))
    if not low:
        return Check("E-BFMI", True, f"min {np.min(values):.2f} (threshold {EBFMI_MIN})", detail)
    summary = (f"chain(s) {', '.join(str(i) for i, _ in low)} below {EBFMI_MIN} "
               f"({', '.join(f'{v:.2f}' for _, v in low)})")
    remedy = ("The momentum resampling moves too little in energy: the posterior has heavy "
              "tails or a funnel (a population scale); reparameterise (non-centred "
              "per-experiment parameters), or tighten weak priors")
    return Check("E-BFMI", False, summary, detail, remedy)


def _divergence_check(stats):
    diverging = np.asarray(stats["diverging"].values, dtype=bool)
    n, total = int(diverging.sum()), diverging.size
    if not n:
        return Check("divergences", True, f"none of {total} transitions")
    per_chain = ", ".join(f"chain {i}: {int(c)}" for i, c in enumerate(diverging.sum(axis=1)))
    return Check("divergences", False, f"{n} of {total} post-warmup transitions diverged",
                 (per_chain,),
                 "Inspect idata.sample_stats.diverging and raise NUTS(target_accept=0.9 "
                 "or 0.95); if they stay, reparameterise (they mark a region the sampler "
                 "cannot enter, and the posterior there is missed)")


def _treedepth_check(stats, max_tree_depth):
    hit = np.asarray(stats["reached_max_treedepth"].values, dtype=bool)
    n, total = int(hit.sum()), hit.size
    if not n:
        return Check("tree depth", True, f"no transition reached the maximum depth "
                     f"{max_tree_depth}")
    return Check("tree depth", False,
                 f"{n} of {total} transitions ({100 * n / total:.1f}%) reached the maximum "
                 f"depth {max_tree_depth}", (),
                 "The trajectories were cut short, so exploration is slow: raise "
                 "NUTS(max_tree_depth=...), or use NUTS(dense_mass=True) when parameters "
                 "are strongly correlated")


def _chain_ess(x):
    """ESS of one chain's values (ArviZ's bulk ESS of a single chain)."""
    return float(arviz_stats.ess(np.asarray(x, dtype=float)[None, :], method="bulk"))


def _apart(lp, posterior, rhat_bad):
    """`(apart, reasons)`: `apart[c, d]` whether chains c and d sit apart (by their log
    density, or by a parameter whose R-hat fails), and for each pair the reasons."""
    num_chains = lp.shape[0]
    means, sds = lp.mean(axis=1), lp.std(axis=1, ddof=1)
    ses = sds / np.sqrt(np.maximum([_chain_ess(lp[c]) for c in range(num_chains)], 1.0))
    spread = float(np.median(sds))
    apart = np.zeros((num_chains, num_chains), dtype=bool)
    for c in range(num_chains):
        for d in range(num_chains):
            diff = means[c] - means[d]
            se = float(np.hypot(ses[c], ses[d]))
            apart[c, d] |= bool(np.isfinite(diff) and abs(diff) > max(spread, STUCK_Z * se))
    bad_names = {label for label, _ in rhat_bad}
    param_means = []
    for label, name, sel in _elements(posterior.isel(chain=0, draw=0, drop=True)):
        if label not in bad_names:
            continue
        x = np.asarray(posterior[name].isel(sel).values, dtype=float)  # (chain, draw)
        cm, sd = x.mean(axis=1), float(np.sqrt(np.mean(x.var(axis=1, ddof=1))))
        if sd > 0:
            apart |= np.abs(cm[:, None] - cm[None, :]) > STUCK_Z * sd
            param_means.append((label, cm))
    return apart, means, spread, param_means


def _groups(apart):
    """Chains joined when they do not sit apart (connected components)."""
    n = apart.shape[0]
    label = list(range(n))
    for c in range(n):
        for d in range(n):
            if not apart[c, d] and label[c] != label[d]:
                old, new = label[d], label[c]
                label = [new if x == old else x for x in label]
    groups = {}
    for c, g in enumerate(label):
        groups.setdefault(g, []).append(c)
    return list(groups.values())


def _chains(chains):
    return ("chain " if len(chains) == 1 else "chains ") + ", ".join(str(c) for c in chains)


def _stuck_check(posterior, stats, rhat_bad, most):
    """Chains that sit apart from the main group: by their mean log density, or by the
    chain means of a parameter whose R-hat fails. The main group is the largest; between
    groups of equal size, the one with the highest mean log density."""
    lp = np.asarray(stats["lp"].values, dtype=float)
    if lp.shape[0] < 2:
        return Check("stuck chains", True, "one chain: needs two or more to compare"), ()
    apart, means, spread, param_means = _apart(lp, posterior, rhat_bad)
    groups = _groups(apart)
    if len(groups) == 1:
        return Check("stuck chains", True, "the chains' log densities and means agree"), ()
    groups.sort(key=lambda g: (-len(g), -float(np.mean(means[g]))))
    main = groups[0]
    detail = []
    for group in groups[1:]:
        diff = float(np.mean(means[group]) - np.mean(means[main]))
        text = (f"{_chains(group)} {'sits' if len(group) == 1 else 'sit'} apart from "
                f"{_chains(main)}: mean log density {np.mean(means[group]):.4g} vs "
                f"{np.mean(means[main]):.4g} ({abs(diff):.3g} {'lower' if diff < 0 else 'higher'};"
                f" within-chain sd {spread:.2g})")
        shown = [f"{label} = {np.mean(cm[group]):.4g} vs {np.mean(cm[main]):.4g}"
                 for label, cm in param_means[:most]]
        if shown:
            text += "; " + ", ".join(shown)
        if abs(diff) <= spread:
            text += " (about equally probable: another mode of the posterior, or a symmetry)"
        detail.append(text)
    stuck = tuple(sorted(c for g in groups[1:] for c in g))
    remedy = ("A chain stuck in another mode (or not yet out of warmup) biases every "
              "summary: look at the per-chain traces (az.plot_trace), run longer warmup, or "
              "start the chains at the posterior mode with NUTS(init='map'); if the other "
              "mode is real and matters, report the posterior as multimodal")
    return Check("stuck chains", False, "; ".join(detail), tuple(detail), remedy), stuck


def check_convergence(idata, var_names=None, *, checks=ALL_CHECKS, max_tree_depth=None,
                      most=MOST) -> ConvergenceReport:
    """The convergence checks `checks` (a subset of `ALL_CHECKS`) of the draws in
    `idata` (groups posterior and sample_stats), for the variables `var_names` (default:
    all of the posterior)."""
    posterior = idata["posterior"].to_dataset()
    if var_names is not None:
        posterior = posterior[list(var_names)]
    stats = idata["sample_stats"].to_dataset()
    num_chains, num_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    found = []
    rhat_check, rhat_bad = _rhat_check(posterior, most) if "rhat" in checks else (None, [])
    if rhat_check is not None:
        found.append(rhat_check)
    if "ess" in checks:
        found += [_ess_check(posterior, "bulk", num_chains, most),
                  _ess_check(posterior, "tail", num_chains, most)]
    if "ebfmi" in checks and "energy" in stats:
        found.append(_ebfmi_check(idata))
    if "divergences" in checks and "diverging" in stats:
        found.append(_divergence_check(stats))
    if "treedepth" in checks and "reached_max_treedepth" in stats:
        found.append(_treedepth_check(stats, max_tree_depth))
    stuck = ()
    if "stuck" in checks and "lp" in stats:
        check, stuck = _stuck_check(posterior, stats, rhat_bad, most)
        found.append(check)
    return ConvergenceReport(tuple(found), num_chains, num_draws, stuck)


def warn(report: ConvergenceReport, stacklevel: int) -> None:
    """One `ConvergenceWarning` for the failed checks of `report` (none when all passed)."""
    if not report.ok:
        warnings.warn(report.warning_text(), ConvergenceWarning, stacklevel=stacklevel + 1)
