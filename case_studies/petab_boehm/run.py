"""Boehm 2014 (STAT5 dimerisation) from its PEtab files: NUTS, fit, and the MAP against the
benchmark collection's best known optimum.

The model, data, noise model and priors all come from the PEtab problem
(`probde.petab.load`, see model.py); nothing is restated here. NUTS, 4 chains x (200 +
200) with a dense mass matrix, started around the posterior mode (`init="map"`; from
uniform starts a chain can stay in a poor local mode with twice the noise). The
collection's nominal parameters are the best known maximum-likelihood fit
(log-likelihood -138.222); the run reports the best log-likelihood among the posterior
draws, and local optimisations of the likelihood (L-BFGS-B on the parameter scale, within
the bounds) from the best draw and from 30 uniform starts, the best of them next to the
nominal parameters.

    python case_studies/petab_boehm/run.py --out results/petab_boehm [--quick]

Writes idata.nc, summary.csv, fit.png (each observable: data, model band, predictive
band), chains.csv (per chain: log-likelihood and parameter medians), comparison.csv (per
parameter: nominal, MAP, posterior median and 90% interval, on the log10 scale) and
optimum.txt. `--quick`: 2 chains x (25 + 25) with trees of at most 2^6 - 1 steps and no
restart of a stuck chain, a run that only shows that the pieces fit together (after 25
warmup iterations the step size is small enough for trees of the full depth, 2^10 - 1
steps: 13 minutes for these 100 iterations, against 4 with the cap).
"""

import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402


def main():
    args = _common.parse_args(__doc__.splitlines()[0])
    num_chains = 2 if args.quick else 4
    _common.setup_jax(num_chains)
    import matplotlib

    matplotlib.use("Agg")
    import probde

    sys.path.insert(0, str(HERE))
    from model import load_problem

    problem = load_problem()
    print(problem)
    # --8<-- [start:method]
    steps = 25 if args.quick else 200
    depth = 6 if args.quick else 10  # --quick: see the module docstring
    # The stiff solver's gradient is the reverse adjoint, which cannot run under pmap
    # (diffrax #765): the chains run one after the other.
    method = probde.NUTS(num_chains=num_chains, num_warmup=steps, num_samples=steps,
                         init="map", dense_mass=True, chain_method="sequential",
                         max_tree_depth=depth, restart_stuck=not args.quick)
    # --8<-- [end:method]
    result = probde.infer(problem.model, problem.data, method, seed=args.seed)
    result.predict(np.linspace(0.0, 240.0, 121))  # model curves on a fine grid
    _common.write_outputs(result, args.out)
    compare_chains(problem, result, args.out)
    compare_with_optimum(problem, result, args.out, num_starts=30, seed=args.seed)


def _log10(problem, params: dict):
    return np.log10(np.array([params[k] for k in problem.estimated], dtype=float))


def compare_chains(problem, result, out):
    """Per chain: the mean and best log-likelihood of its draws and its parameters'
    medians (log10). Chains that sit in different modes show here, with what tells the
    modes apart."""
    import pandas as pd

    post = result.idata.posterior
    llh = result.idata.log_likelihood["y"]
    llh = llh.sum([d for d in llh.dims if d not in ("chain", "draw")])
    table = pd.DataFrame({"mean_log_likelihood": llh.mean("draw").values,
                          "best_log_likelihood": llh.max("draw").values})
    for k in problem.estimated:
        table[k] = np.log10(post[k]).median("draw").values
    table.index.name = "chain"
    print(table.round(2).T.to_string())
    table.to_csv(out / "chains.csv")


def compare_with_optimum(problem, result, out, num_starts, seed):
    """The maximum-likelihood fit, as the collection defines the problem, against its
    best known optimum (the nominal parameters): L-BFGS-B on the log10 scale within the
    bounds, from the best posterior draw and from `num_starts` points drawn uniformly in
    the bounds (pyPESTO's multi-start), with the exact gradient."""
    import jax
    import pandas as pd
    from scipy.optimize import minimize

    post = result.idata.posterior
    llh = result.idata.log_likelihood["y"]
    llh = llh.sum([d for d in llh.dims if d not in ("chain", "draw")])
    best = llh.argmax(dim=["chain", "draw"])
    best_draw = _log10(problem, {k: float(post[k].isel(best)) for k in problem.estimated})
    f = jax.jit(jax.value_and_grad(lambda z: problem.log_likelihood(
        {k: 10.0 ** z[i] for i, k in enumerate(problem.estimated)})))

    def negative(z):
        value, grad = f(z)
        if not np.isfinite(value):  # a failed solve: a wall for the line search
            return 1e10, np.zeros_like(z)
        return -float(value), -np.asarray(grad)

    box = np.log10(problem.tables.parameters.loc[list(problem.estimated),
                                                  ["lowerBound", "upperBound"]].to_numpy(float))
    starts = [best_draw] + list(np.random.default_rng(seed).uniform(
        box[:, 0], box[:, 1], size=(num_starts, len(box))))
    fits = [minimize(negative, z, jac=True, method="L-BFGS-B", bounds=box) for z in starts]
    values = np.array([-fit.fun for fit in fits])
    fit = fits[int(np.argmax(values))]
    nominal_llh = float(problem.log_likelihood())
    lines = [
        f"log-likelihood at the collection's nominal parameters (best known): {nominal_llh:.4f}",
        f"best log-likelihood among the posterior draws: {float(llh.max()):.4f}",
        f"L-BFGS-B from the best draw: {values[0]:.4f}",
        f"best of L-BFGS-B from the best draw and {num_starts} uniform starts: "
        f"{values.max():.4f}",
        f"starts that reached the best known optimum (within 1e-3): "
        f"{int(np.sum(values > nominal_llh - 1e-3))} of {len(values)}",
    ]
    print("\n" + "\n".join(lines))
    (out / "optimum.txt").write_text("\n".join(lines) + "\n")
    rows = []
    for i, k in enumerate(problem.estimated):
        draws = np.log10(post[k].values.ravel())
        rows.append({"parameter": k, "nominal_log10": np.log10(problem.nominal[k]),
                     "map_log10": fit.x[i], "posterior_median_log10": np.median(draws),
                     "q05": np.quantile(draws, 0.05), "q95": np.quantile(draws, 0.95)})
    table = pd.DataFrame(rows).set_index("parameter")
    print(table.round(3).to_string())
    table.to_csv(out / "comparison.csv")
    print(f"wrote {out / 'comparison.csv'}, {out / 'optimum.txt'}")


if __name__ == "__main__":
    main()
