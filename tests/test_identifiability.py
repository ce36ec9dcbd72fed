"""`identifiability`: Fisher information, its sloppy directions and profile likelihoods,
checked against closed forms (a model that sees only a product of two rates; a straight
line through the origin with known noise), against each other (Fisher standard errors vs
profile intervals), on the simple machine's theta-discrepancy confounding and on the
lynx-hare model, and on bad input."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import RTOL
from scipy.stats import chi2

import probde
from probde.checks.identifiability import identifiability

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
F64 = RTOL[np.dtype("float64")]
Z95 = float(np.sqrt(chi2.ppf(0.95, 1)))  # 1.959964: the 95% LR interval of a quadratic


def _case_study(name):
    """`case_studies/<name>/model.py` under a module name of its own (several case studies
    have a `model.py`)."""
    spec = importlib.util.spec_from_file_location(
        f"_case_study_{name}", ROOT / "case_studies" / name / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ only k1 * k2 is seen
@pytest.fixture(scope="module")
def product_model():
    decay = probde.ODE(lambda t, y, th: -th["k1"] * th["k2"] * y, state_names=("x",))
    model = probde.Model(decay, {"k1": dist.LogNormal(0.0, 1.0), "k2": dist.LogNormal(0.0, 1.0)},
                         jnp.array([2.0]), probde.noise.Normal(sigma=0.05), t0=0.0)
    t = np.linspace(0.25, 4.0, 8)
    y = 2.0 * np.exp(-0.6 * t) + 0.05 * np.random.default_rng(1).normal(size=t.size)
    return model, probde.TimeSeries(t, y, observables=("x",))


@pytest.fixture(scope="module")
def product_result(product_model):
    model, data = product_model
    return identifiability(model, data, {"k1": 2.0, "k2": 0.3}, num_points=9)


def test_product_only_model_has_one_exactly_flat_direction(product_result):
    r = product_result
    assert r.labels == ("k1", "k2") and r.scales == ("log", "log")
    assert r.information == "expected"
    # d mu / d log k1 = d mu / d log k2: J = c [[1, 1], [1, 1]], eigenvalues 2c and 0
    np.testing.assert_allclose(r.fisher, r.fisher[0, 0], rtol=F64)
    assert r.eigenvalues[0] > 0
    assert abs(r.eigenvalues[1]) <= 1e-12 * r.eigenvalues[0]
    direction = np.array([1.0, -1.0]) / np.sqrt(2.0)
    np.testing.assert_allclose(r.eigenvectors[:, 1], direction, atol=1e-7)
    (flat,) = r.sloppy
    np.testing.assert_allclose(flat.vector, direction, atol=1e-7)
    assert flat.combination == "0.707 log k1 - 0.707 log k2"
    assert np.all(np.isinf(r.standard_errors))


def test_product_only_model_profiles_are_flat_within_their_grids(product_result):
    r = product_result
    # the maximum is a ridge: along it k1 * k2 is the least-squares rate
    assert float(r.mle["k1"] * r.mle["k2"]) == pytest.approx(0.6, rel=0.05)
    for label in ("k1", "k2"):
        p = r.profiles[label]
        assert p.classification == "flat" and p.interval == (-np.inf, np.inf)
        assert p.converged.all()
        # infinite Fisher standard error: the grid spans 3 prior sds (log scale sd 1)
        assert p.grid[-1] - p.grid[0] == pytest.approx(6.0, rel=0.05)
        np.testing.assert_allclose(p.values, r.max_log_likelihood, atol=1e-8)


def test_report_and_plot_name_the_flat_direction(product_result):
    text = str(product_result)
    assert "0.707 log k1 - 0.707 log k2" in text and "flat" in text
    assert text == product_result.report()
    fig = product_result.plot()
    try:
        assert len(fig.axes) == 3  # two profiles and the spectrum
        assert [ax.get_title() for ax in fig.axes[:2]] == ["flat", "flat"]
    finally:
        plt.close(fig)


# ------------------------------------------------ straight line, known noise: closed form
def _line(sigma=0.3):
    line = probde.ODE(lambda t, y, th: jnp.broadcast_to(th["a"], (1,)), state_names=("y",))
    model = probde.Model(line, {"a": dist.Normal(0.0, 10.0)}, jnp.array([0.0]),
                         probde.noise.Normal(sigma=sigma), t0=0.0)
    t = np.linspace(0.5, 3.0, 6)
    y = 1.3 * t + sigma * np.random.default_rng(0).normal(size=t.size)
    return model, probde.TimeSeries(t, y, observables=("y",)), t, y


def test_linear_gaussian_fisher_and_profile_interval_are_exact(tmp_path):
    sigma = 0.3
    model, data, t, y = _line(sigma)
    r = identifiability(model, data)  # at the posterior mode
    assert r.at == "posterior mode" and r.scales == ("natural",)
    fisher = np.sum(t**2) / sigma**2
    np.testing.assert_allclose(r.fisher, [[fisher]], rtol=F64)
    np.testing.assert_allclose(r.standard_errors, [1 / np.sqrt(fisher)], rtol=F64)
    mle = np.sum(t * y) / np.sum(t**2)
    # the posterior mode is the MLE shrunk towards the prior mean 0 by the prior precision
    np.testing.assert_allclose(r.params["a"], mle * fisher / (fisher + 0.01), rtol=1e-6)
    p = r.profiles["a"]
    np.testing.assert_allclose(p.estimate, mle, rtol=1e-7)
    assert p.classification == "identified"
    half = Z95 / np.sqrt(fisher)
    np.testing.assert_allclose(p.interval, (mle - half, mle + half), rtol=1e-7)
    # the profile is the log-likelihood itself (nothing to optimise over): a parabola
    np.testing.assert_allclose(p.drop, 0.5 * fisher * (p.grid - mle) ** 2, atol=1e-9)
    fig = r.plot(tmp_path / "line.png")
    plt.close(fig)
    assert (tmp_path / "line.png").stat().st_size > 0


# --------------------------------------- identified: exponential decay, unknown noise sd
def test_decay_with_unknown_noise_is_identified_and_fisher_matches_profiles():
    rate, x0, sigma, n = 0.7, 2.0, 0.05, 12
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 1.0)}, jnp.array([x0]),
                         probde.noise.Normal(sigma=dist.HalfNormal(1.0)), t0=0.0)
    t = np.linspace(0.25, 5.0, n)
    y = x0 * np.exp(-rate * t) + sigma * np.random.default_rng(3).normal(size=n)
    data = probde.TimeSeries(t, y, observables=("x",))
    r = identifiability(model, data, {"k": rate, "sigma": sigma})
    assert r.labels == ("k", "sigma") and r.scales == ("log", "log")
    # closed form of the expected information at (k, sigma), on the log scale:
    # d mu / d log k = -k t x0 exp(-k t); the mean and sd parameters are orthogonal; and
    # log sigma carries 2 per observation
    s = -rate * t * x0 * np.exp(-rate * t)
    np.testing.assert_allclose(r.fisher, [[np.sum(s**2) / sigma**2, 0.0], [0.0, 2.0 * n]],
                               rtol=1e-5, atol=1e-9)
    assert r.sloppy == ()
    # the profile intervals against the Fisher standard errors (Wald intervals) at the
    # maximum-likelihood estimate, where the profiles peak: close but not equal, the
    # profile of log k being not exactly quadratic and sigma re-fitted along it
    k, s_hat = float(r.mle["k"]), float(r.mle["sigma"])
    s = -k * t * x0 * np.exp(-k * t)
    se = {"k": s_hat / np.sqrt(np.sum(s**2)), "sigma": 1 / np.sqrt(2.0 * n)}
    for label in r.labels:
        p = r.profiles[label]
        assert p.classification == "identified" and p.converged.all()
        lo, hi = p.interval
        assert lo < p.estimate < hi
        assert (hi - lo) / 2 == pytest.approx(Z95 * se[label], rel=0.1)


# ------------------------------------- the simple machine: theta confounded with delta
@pytest.fixture(scope="module")
def simple_machine():
    return _case_study("simple_machine")


def test_coordinates_log_likelihood_is_probde_log_likelihood(simple_machine):
    from probde.checks import coordinates
    from probde.inference.likelihood import _kwargs

    data = simple_machine.load_data()
    for variant, params in (("none", {"theta": 0.6}),
                            ("gp", {"theta": 0.6, "lengthscale": 2.0, "variance": 0.1})):
        model = simple_machine.build_model(variant)
        coords = coordinates.build(model, model.prepare(data), _kwargs(model), "auto")
        np.testing.assert_allclose(jax.jit(coords.log_likelihood)(params),
                                   probde.log_likelihood(model, data, params), rtol=F64)


def test_simple_machine_theta_profile_widens_with_the_discrepancy(simple_machine):
    data = simple_machine.load_data()
    plain = identifiability(simple_machine.build_model("none"), data, {"theta": 0.56},
                            num_points=11)
    with_gp = identifiability(simple_machine.build_model("gp"), data,
                              {"theta": 0.56, "lengthscale": 2.0, "variance": 0.01},
                              profile=["theta"], num_points=11)
    assert with_gp.information == "observed"  # the marginal GP is no independent noise
    p, q = plain.profiles["theta"], with_gp.profiles["theta"]
    assert p.classification == "identified"
    width_plain = p.interval[1] - p.interval[0]
    # without the discrepancy, theta is pinned by noise sd 0.01 (at a biased value: the
    # simulator has no friction); the GP absorbs part of the slope
    assert width_plain < 0.01
    assert q.interval[1] - q.interval[0] > 10 * width_plain
    assert q.interval[0] < p.interval[0]
    assert list(with_gp.profiles) == ["theta"]
    assert set(with_gp.labels) == {"theta", "lengthscale", "variance"}


# ------------------------------------------------------------------------- lynx-hare
@pytest.mark.slow
def test_lynx_hare_parameters_are_identified(tmp_path):
    # the call of docs/guide/checking.md, which the docs test skips (this is its check)
    model = _case_study("lynx_hare").build_model()
    r = identifiability(model, probde.datasets.lynx_hare(),
                        profile=["alpha", "beta", "gamma", "delta"], num_points=15)
    assert "identified" in str(r)
    plt.close(r.plot(tmp_path / "identifiability.png"))
    assert (tmp_path / "identifiability.png").stat().st_size > 0
    assert r.at == "posterior mode" and r.information == "expected"
    assert r.sloppy == ()
    for label in ("alpha", "beta", "gamma", "delta"):
        p = r.profiles[label]
        assert p.classification == "identified", (label, p)
        lo, hi = p.interval
        se = r.standard_errors[r.labels.index(label)]
        assert (hi - lo) / 2 == pytest.approx(Z95 * se, rel=0.5)
    # the Stan case study's posterior medians (about 0.55, 0.028, 0.80, 0.024)
    for name, value in (("alpha", 0.55), ("beta", 0.028), ("gamma", 0.80), ("delta", 0.024)):
        assert float(r.params[name]) == pytest.approx(value, rel=0.15)


# ---------------------------------------------------------------------------- float32
FLOAT32_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np, numpyro.distributions as dist, probde
from probde.checks.identifiability import identifiability
assert not jax.config.jax_enable_x64
decay = probde.ODE(lambda t, y, th: -th["k1"] * th["k2"] * y, state_names=("x",))
model = probde.Model(decay, {"k1": dist.LogNormal(0.0, 1.0), "k2": dist.LogNormal(0.0, 1.0)},
                     jnp.array([2.0]), probde.noise.Normal(sigma=dist.HalfNormal(1.0)), t0=0.0)
t = np.linspace(0.25, 4.0, 8)
y = 2.0 * np.exp(-0.6 * t) + 0.05 * np.random.default_rng(1).normal(size=t.size)
r = identifiability(model, probde.TimeSeries(t, y, observables=("x",)),
                    {"k1": 2.0, "k2": 0.3, "sigma": 0.05}, num_points=9)
print("RESULT", json.dumps(dict(
    dtype=str(r.fisher.dtype), eigenvalues=r.eigenvalues.tolist(),
    sloppy=[d.combination for d in r.sloppy],
    classes={k: p.classification for k, p in r.profiles.items()},
    sigma_interval=list(r.profiles["sigma"].interval))))
"""


@pytest.mark.slow
def test_float32_in_a_fresh_process():
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FLOAT32_SCRIPT], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["dtype"] == "float32"
    values = out["eigenvalues"]
    assert abs(values[-1]) <= 1e-5 * values[0]  # exactly flat to float32 rounding
    assert out["sloppy"] == ["0.707 log k1 - 0.707 log k2"]
    assert out["classes"] == {"k1": "flat", "k2": "flat", "sigma": "identified"}
    assert np.all(np.isfinite(out["sigma_interval"]))


# ------------------------------------------------------------------------- bad input
def test_bad_input_is_named(product_model):
    model, data = product_model
    good = {"k1": 1.0, "k2": 0.5}
    with pytest.raises(TypeError, match="model must be a probde.Model"):
        identifiability("model", data, good)
    with pytest.raises(ValueError, match="num_points must be an odd integer"):
        identifiability(model, data, good, num_points=10)
    with pytest.raises(ValueError, match="width must be a positive finite number"):
        identifiability(model, data, good, width=0.0)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        identifiability(model, data, good, max_steps=0)
    with pytest.raises(ValueError, match=r"params must have exactly the keys \['k1', 'k2'\]; "
                                         r"missing \['k2'\], unexpected \['k3'\]"):
        identifiability(model, data, {"k1": 1.0, "k3": 0.5})
    with pytest.raises(TypeError, match="params must be a dict"):
        identifiability(model, data, [1.0, 0.5])
    with pytest.raises(ValueError, match=r"params\['k2'\] must be finite and inside its "
                                         r"prior's support; got -0.5"):
        identifiability(model, data, {"k1": 1.0, "k2": -0.5})
    with pytest.raises(ValueError, match=r"params\['k1'\] must have shape \(\); got \(2,\)"):
        identifiability(model, data, {"k1": [1.0, 2.0], "k2": 0.5})
    with pytest.raises(ValueError, match="profile names 'k3', which is not a parameter"):
        identifiability(model, data, good, profile=["k3"])
    with pytest.raises(ValueError, match=r"scale of 'k1' must be one of \('auto', 'log', "
                                         r"'natural'\); got 'logit'"):
        identifiability(model, data, good, scale={"k1": "logit"})
    with pytest.raises(ValueError, match=r"scale names parameters the model does not have: "
                                         r"\['k3'\]"):
        identifiability(model, data, good, scale={"k3": "log"})
    with pytest.raises(ValueError, match=r"bounds\['k1'\] must be \(low, high\) with "
                                         r"low < high and low > 0"):
        identifiability(model, data, good, bounds={"k1": (0.0, 2.0)})
    with pytest.raises(ValueError, match="data.observables must match"):
        identifiability(model, probde.TimeSeries([1.0, 2.0], [1.0, 0.5], observables=("z",)),
                        good)


def test_log_scale_is_refused_for_a_parameter_that_can_be_negative():
    line, data, _, _ = _line()
    with pytest.raises(ValueError, match="scale 'log' needs a parameter that cannot be "
                                         "negative; the prior of 'a' has support down to"):
        identifiability(line, data, {"a": 1.0}, scale="log")
