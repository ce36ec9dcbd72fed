"""Reference timings: cd-dynamax's continuous-discrete EKF (and UKF) on stochastic FitzHugh–Nagumo.

Runs in a separate environment with cd-dynamax installed (NOT the project venv; this
script never imports probde), e.g.::

    python3.12 -m venv /work/refenv && /work/refenv/bin/pip install cd-dynamax dynestyx
    /work/refenv/bin/pip install jax==0.10.2 jaxlib==0.10.2   # match the project venv's jax
    taskset -c 1 /work/refenv/bin/python benchmarks/filter_reference.py \
        --out benchmarks/results_filter_reference.json

Problem (data from `benchmarks/fhn_data.py`, numpy only, identical on both sides)::

    dv = (v - v^3/3 - w + I) dt + s_v dW1,   dw = eps (v + a - b w) dt + s_w dW2
    a=0.7, b=0.8, eps=0.08, I=0.5, s_v=0.3, s_w=0.1, x(0) ~ N([-1, 1], 0.1^2 I) at t=0,
    y_k = v(t_k) + N(0, 0.1^2), t_k = 2k, k = 1..N.

What is timed, for each N: the jit-compiled EKF marginal log-likelihood as a function of
theta = (a, b, eps, s_v, s_w, obs_sd), and its jit-compiled value-and-gradient w.r.t.
theta (reverse mode, through diffrax's default RecursiveCheckpointAdjoint); median wall
time over repeats after one warm-up (compile) call, x64.

cd-dynamax puts the initial distribution at the FIRST observation time (dynestyx, which
delegates its continuous-time filters to cd-dynamax, also rejects t0 != obs_times[0]).
To get the model above, with the prior at t=0, one pseudo-observation is prepended at
t=0 with y = m0[0] and variance R0 = 1e10 (a time-dependent emission covariance): its
gain is P/R0 ~ 1e-12 and its residual is 0, so it leaves the filter unchanged to ~1e-12,
and its log-likelihood term, exactly -0.5*log(2*pi*(R0 + P0[0,0])) and independent of
theta, is subtracted. The filter therefore does the t=0 -> t=2 prediction and N updates,
like a filter whose prior sits at t=0. (cd-dynamax also predicts from t_N to
t_N + 1e-4 after the last update: negligible.)

Moment ODEs (EKF "first" order: dm/dt = f(m), dP/dt = F P + P F' + L Q L') are solved by
cd-dynamax's wrapper around diffrax.diffeqsolve, whose defaults are Dopri5,
ConstantStepSize, dt0=0.01, RecursiveCheckpointAdjoint, SaveAt(t1=True). Two settings
are timed: "adaptive" (Dopri5 + PIDController(rtol=1e-6, atol=1e-6), dt0=0.01) and
"fixed" (the library default: Dopri5 with constant step 0.01, i.e. 200 steps per
observation interval). max_steps=1000 in both (dynestyx's default; cd-dynamax's own
high-level `filter` default of 100 is too small for the fixed step here).

Timings depend strongly on the jax/XLA version (on this problem jax 0.10.2 ran the EKF
3-10x slower than jax 0.12.0.1, same cd-dynamax and diffrax), so compare with our side only
at the same jax version (the JSON records it). Each N is a fresh compile (~5 s for the
log-likelihood, ~15 s for its gradient on one core); the whole default run takes ~2.5-4 min.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from fhn_data import M0, OBS_DT, P0_SD, TRUE_PARAMS, simulate_data  # noqa: E402

R0_PSEUDO = 1e10
THETA_NAMES = ("a", "b", "eps", "s_v", "s_w", "obs_sd")


def build(jax, jnp, dfx):
    """Model construction through cd-dynamax's public classes; returns loglik(theta, t, y)."""
    from typing import NamedTuple

    from cd_dynamax import EKFHyperParams, ParamsCDNLGSSM, UKFHyperParams, cdnlgssm_filter
    from cd_dynamax.dynamax.linear_gaussian_ssm.inference import ParamsLGSSMInitial
    from cd_dynamax.src.continuous_discrete_nonlinear_gaussian_ssm import (
        ParamsCDNLGSSMDynamics,
        ParamsCDNLGSSMEmissions,
    )
    from cd_dynamax.src.continuous_discrete_nonlinear_gaussian_ssm.cdnlgssm_utils import (
        LearnableDiagonalMatrix,
        LearnableLinear,
        LearnableMatrix,
        LearnableVector,
    )

    I_CURRENT = TRUE_PARAMS["I"]

    # Learnable functions follow cd-dynamax's convention: NamedTuple of parameters with
    # a method f(x, u, t).
    class FHNDrift(NamedTuple):
        a: jax.Array
        b: jax.Array
        eps: jax.Array

        def f(self, x, u=None, t=None):
            v, w = x[0], x[1]
            return jnp.stack([v - v ** 3 / 3.0 - w + I_CURRENT,
                              self.eps * (v + self.a - self.b * w)])

    class ObsCov(NamedTuple):
        # R = obs_sd^2 at the real observation times; R0_PSEUDO at the t=0 pseudo-observation
        obs_sd: jax.Array

        def f(self, x=None, u=None, t=None):
            r = jnp.where(t < 0.5 * OBS_DT, R0_PSEUDO, self.obs_sd ** 2)
            return jnp.reshape(r, (1, 1))

    m0 = jnp.asarray(M0)
    P0 = P0_SD ** 2 * jnp.eye(2)
    pseudo_ll = -0.5 * jnp.log(2 * jnp.pi * (R0_PSEUDO + P0[0, 0]))

    def make_params(theta):
        a, b, eps, s_v, s_w, obs_sd = (theta[i] for i in range(6))
        return ParamsCDNLGSSM(
            initial=ParamsLGSSMInitial(mean=LearnableVector(params=m0),
                                       cov=LearnableMatrix(params=P0)),
            dynamics=ParamsCDNLGSSMDynamics(
                drift=FHNDrift(a=a, b=b, eps=eps),
                diffusion_coefficient=LearnableDiagonalMatrix(diag_params=jnp.stack([s_v, s_w])),
                diffusion_cov=LearnableMatrix(params=jnp.eye(2)),
                approx_order=1.0,  # not read by the filters (they use state_order)
            ),
            emissions=ParamsCDNLGSSMEmissions(
                emission_function=LearnableLinear(weights=jnp.array([[1.0, 0.0]]),
                                                  bias=jnp.zeros(1)),
                emission_cov=ObsCov(obs_sd=obs_sd),
            ),
        )

    def make_hyper(kind, settings):
        if kind == "EKF":
            return EKFHyperParams(state_order="first", emission_order="first",
                                  diffeqsolve_settings=settings)
        return UKFHyperParams(state_order="first", diffeqsolve_settings=settings)

    def loglik_fn(kind, settings):
        hyper = make_hyper(kind, settings)

        def loglik(theta, t_em, y_em):
            # prepend the t=0 pseudo-observation y = m0[0] (residual 0)
            t_all = jnp.concatenate([jnp.zeros(1), t_em])[:, None]
            y_all = jnp.concatenate([m0[:1], y_em])[:, None]
            post = cdnlgssm_filter(params=make_params(theta), emissions=y_all,
                                   t_emissions=t_all, filter_hyperparams=hyper,
                                   output_fields=["marginal_loglik"], warn=False)
            return post.marginal_loglik - pseudo_ll

        return loglik

    return loglik_fn


def time_calls(fn, args, repeats, jax):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return out, first, times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path,
                        default=HERE / "results_filter_reference.json")
    parser.add_argument("--Ns", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed calls after one warm-up (fewer for large N: --budget-s)")
    parser.add_argument("--budget-s", type=float, default=4.0,
                        help="cap on timed seconds per (setting, filter, N, ll|grad): repeats are "
                             "reduced to fit, at least 3")
    parser.add_argument("--settings", nargs="+", default=["adaptive", "fixed"],
                        choices=["adaptive", "fixed"])
    parser.add_argument("--filters", nargs="+", default=["EKF", "UKF"], choices=["EKF", "UKF"])
    parser.add_argument("--fixed-Ns", type=int, nargs="+", default=[25, 400],
                        help="N values for the 'fixed' setting (each N costs ~15 s of compiling)")
    parser.add_argument("--ukf-Ns", type=int, nargs="+", default=[100],
                        help="N values at which the UKF is also run ('adaptive' setting only)")
    parser.add_argument("--quick", action="store_true", help="N 25 and 50 only, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.Ns, args.repeats, args.ukf_Ns, args.fixed_Ns = [25, 50], 3, [25], [25]

    import jax

    jax.config.update("jax_enable_x64", True)
    from importlib.metadata import version

    import diffrax as dfx
    import jax.numpy as jnp

    settings_all = {
        "adaptive": {"solver": dfx.Dopri5(),
                     "stepsize_controller": dfx.PIDController(rtol=1e-6, atol=1e-6),
                     "dt0": 0.01, "max_steps": 1000},
        "fixed": {"solver": dfx.Dopri5(), "stepsize_controller": dfx.ConstantStepSize(),
                  "dt0": 0.01, "max_steps": 1000},
    }
    describe = {
        "adaptive": "diffrax Dopri5, PIDController(rtol=1e-6, atol=1e-6), dt0=0.01, "
                    "max_steps=1000, RecursiveCheckpointAdjoint(), SaveAt(t1=True)",
        "fixed": "diffrax Dopri5, ConstantStepSize, dt0=0.01 (200 steps per interval), "
                 "max_steps=1000, RecursiveCheckpointAdjoint(), SaveAt(t1=True) "
                 "[cd-dynamax's default solver, controller and dt0]",
    }

    loglik_fn = build(jax, jnp, dfx)
    theta = jnp.array([TRUE_PARAMS[k] for k in THETA_NAMES])

    t_full, y_full = simulate_data(max(args.Ns), seed=0)
    results = {
        "library": "cd-dynamax",
        "library_version": version("cd-dynamax"),
        "dynestyx_version": _maybe_version("dynestyx"),
        "jax_version": jax.__version__,
        "jaxlib_version": version("jaxlib"),
        "diffrax_version": version("diffrax"),
        "python": platform.python_version(),
        "x64": True,
        "theta_names": list(THETA_NAMES),
        "theta": [float(x) for x in theta],
        "data": "benchmarks/fhn_data.py simulate_data(N, seed=0) (prefix of N=max)",
        "model": {"drift": "[v - v^3/3 - w + I, eps (v + a - b w)]", "I": TRUE_PARAMS["I"],
                  "L": "diag(s_v, s_w)", "Q": "I_2", "h": "v", "R": "obs_sd^2",
                  "m0": list(M0), "P0": f"{P0_SD}^2 I at t=0",
                  "obs_times": "t_k = 2k, k=1..N"},
        "filter": {"EKF": "cdnlgssm_filter(..., EKFHyperParams(state_order='first', "
                          "emission_order='first'), num_iter=1)",
                   "UKF": "cdnlgssm_filter(..., UKFHyperParams(state_order='first'; "
                          "alpha=sqrt(3), beta=2, kappa=1 defaults))"},
        "initial_time_handling": f"pseudo-observation at t=0, y=m0[0], R={R0_PSEUDO:g}, its "
                                 "exact log-lik term subtracted (see script docstring)",
        "timing": "median wall time of jitted call, after one warm-up call; block_until_ready",
        "settings": {k: describe[k] for k in args.settings},
        "psd_checks": "cd-dynamax symmetrises and eigvalsh-checks every covariance it forms "
                      "(psd(), not switchable off); warn=False only silences the print",
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible",
        "results": {},
    }
    total_start = time.perf_counter()
    for setting in args.settings:
        results["results"][setting] = {}
        for kind in args.filters:
            ll = loglik_fn(kind, settings_all[setting])
            ll_jit = jax.jit(ll)
            vg_jit = jax.jit(jax.value_and_grad(ll))
            rows = {}
            if kind == "UKF":
                Ns = args.ukf_Ns if setting == "adaptive" else []
            else:
                Ns = args.Ns if setting == "adaptive" else args.fixed_Ns
            if not Ns:
                continue
            for N in Ns:
                t_em, y_em = jnp.asarray(t_full[:N]), jnp.asarray(y_full[:N])
                row = {}
                for label, fn in (("loglik", ll_jit), ("value_and_grad", vg_jit)):
                    out, first, times = time_calls(fn, (theta, t_em, y_em), 1, jax)
                    reps = max(3, min(args.repeats, int(args.budget_s / max(times[0], 1e-9))))
                    _, _, more = time_calls(fn, (theta, t_em, y_em), reps - 1, jax)
                    times = times + more
                    row["time_" + label] = {"median_s": statistics.median(times),
                                            "min_s": min(times), "repeats": len(times),
                                            "first_call_s": first}
                    if label == "loglik":
                        row["loglik"] = float(out)
                    else:
                        row["loglik_from_value_and_grad"] = float(out[0])
                        grads = [float(g) for g in out[1]]
                        row["grad"] = dict(zip(THETA_NAMES, grads, strict=True))
                rows[str(N)] = row
                tl, tg = row["time_loglik"], row["time_value_and_grad"]
                print(f"{setting:8s} {kind} N={N:4d} loglik={row['loglik']: .10f}  "
                      f"ll {1e3 * tl['median_s']:9.2f} ms (x{tl['repeats']})  "
                      f"vg {1e3 * tg['median_s']:9.2f} ms (x{tg['repeats']})  "
                      f"first calls {tl['first_call_s']:.1f}s/{tg['first_call_s']:.1f}s",
                      flush=True)
            results["results"][setting][kind] = rows
    results["total_wall_s"] = time.perf_counter() - total_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


def _maybe_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
