"""Gaussian filters on linear SDEs against a hand-written Kalman filter (the floor).

    python benchmarks/linear_filter.py [--sizes 100 1000 10000] [--repeats 5]
                                       [--moment-ode-max 1000] [--out PATH] [--quick]

What is timed: one jit-compiled `jax.value_and_grad` of `probde.log_likelihood(model,
data, params)` (what NUTS needs per leapfrog step) for N irregularly spaced observations
(gaps exponential with mean 0.5), float64, on the CPU:

- **OU, exact**: an Ornstein-Uhlenbeck model `dx = k (m - x) dt + s dW`, declared
  `linear=True`, observed with Normal noise of unknown scale, with the default
  `probde.EKF()` (exact discretisation); parameters k, m, s, sigma;
- **OU, moment ODEs**: the same model with `linear=False` (the EKF's moment equations
  solved by diffrax between observations), up to `--moment-ode-max` observations;
- **Matern-3/2, exact**: the two-state SDE of a Matern-3/2 GP (`linear=True`), its first
  state observed; parameters lam, sf (the matrix route: scaling, Taylor, doubling);
- **floor**: a hand-written Kalman filter of the OU model in one `lax.scan` with the
  closed-form transition `exp(-k dt)` (what a user who knows the model would write);
- **Matern floor**: the same for the Matern-3/2 SDE, the like-for-like baseline of the
  Matern rows: its closed-form transition `F = exp(-lam dt) [[1 + lam dt, dt],
  [-lam^2 dt, 1 - lam dt]]`, `Q = Pinf - F Pinf F'` with the stationary covariance
  `Pinf = diag(sf^2, lam^2 sf^2)`, and the 2 x 2 algebra written out by hand.

Each figure: after one call that compiles, `--repeats` repeats, each the wall time of as
many calls as fit in 0.3 s divided by their number; every repeat is kept in the JSON, the
table gives min / median / max and the median's ratio to the floor's median measured in
the same process at the same N (the OU rows against the OU floor, the Matern rows against
the Matern floor). Pin the process to one core (`taskset -c 1`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import probde  # noqa: E402  (before gpjax, which starts JAX's backend: probde/_xla.py)
import gpjax  # noqa: E402, I001
from probde.discrepancy import markov  # noqa: E402

OU = {"k": 0.8, "m": 0.6, "s": 0.7, "sigma": 0.3}
MATERN = {"lam": 1.3, "sf": 0.9, "sigma": 0.2}


def ou_drift(t, x, th):
    return th["k"] * (th["m"] - x)


def ou_diffusion(t, x, th):
    return jnp.stack([th["s"]])


def matern_drift(t, x, th):
    lam = th["lam"]
    return jnp.stack([x[1], -lam**2 * x[0] - 2.0 * lam * x[1]])


def matern_diffusion(t, x, th):
    return jnp.stack([0.0 * th["lam"], jnp.sqrt(4.0 * th["lam"] ** 3 * th["sf"] ** 2)])


def ou_problem(n, linear, seed=0, likelihood=None):
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(0.5, n))
    k, m, s, sig = OU["k"], OU["m"], OU["s"], OU["sigma"]
    x, prev, xs = m, 0.0, []
    for t in times:
        e = np.exp(-k * (t - prev))
        x = m + e * (x - m) + np.sqrt(s**2 / (2 * k) * (1 - e**2)) * rng.normal()
        xs.append(x)
        prev = t
    values = np.array(xs) + sig * rng.normal(size=n)
    model = probde.Model(
        probde.SDE(ou_drift, ou_diffusion, state_names=("x",), linear=linear),
        {"k": dist.LogNormal(0.0, 0.5), "m": dist.Normal(0.0, 1.0),
         "s": dist.LogNormal(-0.5, 0.5)},
        initial_state=lambda th: dist.MultivariateNormal(
            jnp.full(1, th["m"]), jnp.eye(1) * th["s"] ** 2 / (2 * th["k"])),
        observation=probde.noise.Normal(sigma=dist.HalfNormal(1.0)),
        likelihood=likelihood or probde.EKF(), t0=0.0)
    return model, probde.TimeSeries(times, values, observables=("x",)), times, values


def matern_problem(n, seed=0, likelihood=None):
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(0.5, n))
    values = np.sin(times) + MATERN["sigma"] * rng.normal(size=n)

    def initial(th):
        var = jnp.stack([th["sf"] ** 2, th["lam"] ** 2 * th["sf"] ** 2])
        return dist.MultivariateNormal(jnp.zeros(2), jnp.diag(var))

    model = probde.Model(
        probde.SDE(matern_drift, matern_diffusion, state_names=("x1", "x2"), linear=True),
        {"lam": dist.LogNormal(0.0, 0.5), "sf": dist.LogNormal(0.0, 0.5)},
        initial_state=initial, observation=probde.noise.Normal(sigma=dist.HalfNormal(1.0)),
        observe=("x1",), likelihood=likelihood or probde.EKF(), t0=0.0)
    return model, probde.TimeSeries(times, values, observables=("x1",))


def floor_loglik(p, times, y):
    """The OU model's Kalman filter by hand: closed-form transitions, scalar algebra."""
    k, m, s, sig = p["k"], p["m"], p["s"], p["sigma"]
    v = s**2 / (2 * k)
    gaps = jnp.diff(jnp.concatenate([jnp.zeros(1), times]))
    F = jnp.exp(-k * gaps)

    def step(carry, inp):
        mu, P = carry
        f, yy = inp
        mu = m + f * (mu - m)
        P = f * P * f + v * (1 - f * f)
        S = P + sig**2
        r = yy - mu
        K = P / S
        return (mu + K * r, (1 - K) * P), -0.5 * (jnp.log(2 * jnp.pi * S) + r * r / S)

    _, ll = jax.lax.scan(step, (m, v), (F, y))
    return jnp.sum(ll)


def matern_floor_loglik(p, times, y):
    """The Matern-3/2 SDE's Kalman filter by hand: closed-form 2 x 2 transitions (batched
    before the scan), the first state observed, the 2 x 2 algebra as scalars."""
    lam, sf, sig = p["lam"], p["sf"], p["sigma"]
    v1, v2 = sf**2, lam**2 * sf**2  # stationary variances; the covariance is diagonal
    dt = jnp.diff(jnp.concatenate([jnp.zeros(1), times]))
    e = jnp.exp(-lam * dt)
    f11, f12, f21, f22 = e * (1 + lam * dt), e * dt, -e * lam**2 * dt, e * (1 - lam * dt)
    q11 = v1 - (f11 * f11 * v1 + f12 * f12 * v2)
    q12 = -(f11 * f21 * v1 + f12 * f22 * v2)
    q22 = v2 - (f21 * f21 * v1 + f22 * f22 * v2)

    def step(carry, inp):
        m1, m2, p11, p12, p22 = carry
        a, b, c, d, s11, s12, s22, yy = inp
        m1, m2 = a * m1 + b * m2, c * m1 + d * m2
        # P <- F P F' + Q, written out
        t11, t12 = a * p11 + b * p12, a * p12 + b * p22
        t21, t22 = c * p11 + d * p12, c * p12 + d * p22
        p11, p12, p22 = t11 * a + t12 * b + s11, t11 * c + t12 * d + s12, t21 * c + t22 * d + s22
        S = p11 + sig**2
        r = yy - m1
        k1, k2 = p11 / S, p12 / S
        ll = -0.5 * (jnp.log(2 * jnp.pi * S) + r * r / S)
        return (m1 + k1 * r, m2 + k2 * r, p11 - k1 * p11, p12 - k1 * p12, p22 - k2 * p12), ll

    init = (jnp.zeros(()), jnp.zeros(()), v1, jnp.zeros(()), v2)
    _, ll = jax.lax.scan(step, init, (f11, f12, f21, f22, q11, q12, q22, y))
    return jnp.sum(ll)


def timed(fn, params, repeats):
    jax.block_until_ready(fn(params))
    out = []
    for _ in range(repeats):
        start, calls = time.perf_counter(), 0
        while True:
            jax.block_until_ready(fn(params))
            calls += 1
            if time.perf_counter() - start > 0.3:
                break
        out.append((time.perf_counter() - start) / calls)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--moment-ode-max", type=int, default=1000)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results_linear_filter.json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = [100, 1000], 3
    results = {"command": " ".join(["python", "benchmarks/linear_filter.py"] + sys.argv[1:]),
               "cpus": sorted(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
               "jax": jax.__version__, "sizes": {}}
    rows = []
    for n in args.sizes:
        model, data, times, values = ou_problem(n, linear=True)
        ou_p = {k: jnp.asarray(v) for k, v in OU.items()}
        floor = jax.jit(jax.value_and_grad(
            lambda p: floor_loglik(p, jnp.asarray(times), jnp.asarray(values))))
        exact = jax.jit(jax.value_and_grad(lambda p: probde.log_likelihood(model, data, p)))
        got, want = float(exact(ou_p)[0]), float(floor(ou_p)[0])
        if abs(got - want) > 1e-8 * abs(want):
            raise SystemExit(f"N={n}: probde {got} differs from the floor {want}")
        pmodel, pdata, _, _ = ou_problem(n, linear=True, likelihood=probde.EKF(parallel=True))
        parallel = jax.jit(jax.value_and_grad(lambda p: probde.log_likelihood(pmodel, pdata, p)))
        got = float(parallel(ou_p)[0])
        if abs(got - want) > 1e-8 * abs(want):
            raise SystemExit(f"N={n}: the parallel filter's {got} differs from the floor {want}")
        entry = {"floor": timed(floor, ou_p, args.repeats),
                 "ou_exact": timed(exact, ou_p, args.repeats),
                 "ou_parallel": timed(parallel, ou_p, args.repeats)}
        if n <= args.moment_ode_max:
            mmodel, mdata, _, _ = ou_problem(n, linear=False)
            moment = jax.jit(jax.value_and_grad(
                lambda p: probde.log_likelihood(mmodel, mdata, p)))
            entry["ou_moment_ode"] = timed(moment, ou_p, args.repeats)
        gmodel, gdata = matern_problem(n)
        gp = {k: jnp.asarray(v) for k, v in MATERN.items()}
        matern = jax.jit(jax.value_and_grad(lambda p: probde.log_likelihood(gmodel, gdata, p)))
        gfloor = jax.jit(jax.value_and_grad(lambda p: matern_floor_loglik(
            p, jnp.asarray(gdata.times), jnp.asarray(gdata.values)[:, 0])))
        got, want = float(matern(gp)[0]), float(gfloor(gp)[0])
        if abs(got - want) > 1e-8 * abs(want):
            raise SystemExit(f"N={n}: probde's Matern {got} differs from its floor {want}")
        pmodel, pdata = matern_problem(n, likelihood=probde.EKF(parallel=True))
        mparallel = jax.jit(jax.value_and_grad(
            lambda p: probde.log_likelihood(pmodel, pdata, p)))
        got = float(mparallel(gp)[0])
        if abs(got - want) > 1e-8 * abs(want):
            raise SystemExit(f"N={n}: the parallel Matern filter's {got} differs from {want}")
        entry["matern_floor"] = timed(gfloor, gp, args.repeats)
        entry["matern_exact"] = timed(matern, gp, args.repeats)
        entry["matern_parallel"] = timed(mparallel, gp, args.repeats)
        gtimes, gvalues = jnp.asarray(gdata.times), jnp.asarray(gdata.values)[:, 0]

        def markov_gp(p):
            kernel = gpjax.kernels.Matern32(lengthscale=jnp.sqrt(3.0) / p["lam"],
                                            variance=p["sf"] ** 2)
            return markov.log_marginal(kernel, gtimes, gvalues, p["sigma"] ** 2)

        mgp = jax.jit(jax.value_and_grad(markov_gp))
        got = float(mgp(gp)[0])
        if abs(got - want) > 1e-8 * abs(want):
            raise SystemExit(f"N={n}: the Markov GP's {got} differs from the Matern floor {want}")
        entry["markov_gp"] = timed(mgp, gp, args.repeats)
        results["sizes"][str(n)] = entry
        for name, ts in entry.items():
            base = np.median(entry["floor" if name.startswith(("floor", "ou_"))
                                   else "matern_floor"])
            ts = np.asarray(ts) * 1e3
            rows.append(f"| {n} | {name} | {ts.min():.3f} | {np.median(ts):.3f} | "
                        f"{ts.max():.3f} | {np.median(ts) / (base * 1e3):.1f} |")
        print(rows[-1], flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    print("| N | what | ms min | ms median | ms max | median / floor |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
