"""`probde.DeepGPEmulator`: a random-feature deep GP trained by SVI on simulator runs."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import probde
from probde.design import latin_hypercube

TIMES = np.linspace(0.0, 4.0, 10)
BOUNDS = {"k": (0.2, 1.5)}
K_TRUE = 0.8
SIGMA = 0.02


def simulator(theta):
    """Exponential decay and its 'flux' t * exp(-k t): two smooth observables."""
    decay = np.exp(-theta["k"] * TIMES)
    return np.stack([decay, TIMES * decay], axis=1)


@pytest.fixture(scope="module")
def emulator():
    # 20 runs (15 trained on, 5 held out) x 10 times: N = 150 training points.
    design = latin_hypercube(BOUNDS, 20, seed=1)
    return probde.DeepGPEmulator.fit(
        simulator, TIMES, design, observables=("x", "flux"), bounds=BOUNDS,
        num_features=40, num_steps=2000, num_draws=64, held_out=0.25, seed=0,
        progress_bar=False,
    )


def test_emulates_a_smooth_simulator_on_held_out_runs(emulator):
    d = emulator.diagnostics
    assert d.held_out_runs.shape == (5,)
    assert d.mean.shape == d.sd.shape == d.simulated.shape == (5, TIMES.size, 2)
    assert not np.any(np.isin(d.held_out_runs, emulator.training_runs))
    # This design's held-out runs lie inside the training runs' range of k (interpolation).
    # A held-out run beyond it is extrapolation, where the deep GP is much worse and its
    # intervals too narrow (measured with another design: RMSE 0.4 sd at k = 0.21 when
    # the training runs start at k = 0.33); the tolerances below are for interpolation.
    k_fit = emulator.design[emulator.training_runs, 0]
    k_held = emulator.design[d.held_out_runs, 0]
    assert k_fit.min() < k_held.min() and k_held.max() < k_fit.max()
    # Accuracy: predicting the mean of the runs has an RMSE of one output sd; an emulator
    # worth calibrating with must be an order of magnitude better on runs it never saw.
    sd = emulator.outputs.std(axis=(0, 1))
    assert np.all(d.rmse < 0.1 * sd), (d.rmse, sd)
    # Calibration of the predictive sds (noise included): points of one run are strongly
    # correlated, so with 5 held-out runs the coverage is about as precise as a proportion
    # over 5 runs (sd ~0.1-0.2): only gross over-confidence (intervals that miss most
    # points) or uselessly wide intervals fail.
    cov = d.coverage
    assert np.all(cov[0.95] >= 0.6), cov
    assert np.all(cov[0.5] >= 0.2), cov
    assert np.all(d.rms_standardised_error < 3.0), d.rms_standardised_error
    assert np.all(d.rms_standardised_error > 0.1), d.rms_standardised_error
    # and at a parameter value between the design points
    mean, cov_ = emulator.predict(TIMES, {"k": K_TRUE})
    np.testing.assert_allclose(np.asarray(mean), simulator({"k": K_TRUE}), atol=0.2 * sd.max())


def test_fit_record_and_summary(emulator):
    assert emulator.loss_trace.shape == (2000,)
    assert np.all(np.isfinite(emulator.loss_trace))
    # SVI made progress: the last tenth's loss is far below the first tenth's
    assert emulator.loss_trace[-200:].mean() < emulator.loss_trace[:200].mean()
    assert emulator.num_draws == 64
    assert emulator.parameter_names == ("k",) and emulator.state_names == ("x", "flux")
    assert emulator.num_states == 2 and emulator.bounds == {"k": (0.2, 1.5)}
    np.testing.assert_array_equal(emulator.times, TIMES)
    h = emulator.hyperparameters
    assert h["lengthscale"].shape == (2,) and h["noise"].shape == (2,)
    text = emulator.summary()
    assert text.startswith("DeepGPEmulator: 20 runs x 10 times")
    assert "held-out diagnostics (5 runs held out and never trained on" in text
    assert repr(emulator) == text


def test_predict_is_pure_jax_in_theta(emulator):
    t = jnp.linspace(0.5, 3.5, 6)
    mean, cov = emulator.predict(t, {"k": 0.7})
    # the shapes of GPEmulator.predict: mean (T, O), cov (O, T, T)
    assert mean.shape == (6, 2) and cov.shape == (2, 6, 6)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-12)
    assert np.all(np.linalg.eigvalsh(np.asarray(cov)) > 0)  # PSD plus jitter
    # jit (dict or array theta) gives the same as the direct call
    jm, jc = jax.jit(lambda k: emulator.predict(t, jnp.stack([k])))(0.7)
    np.testing.assert_allclose(jm, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jc, cov, rtol=1e-10, atol=1e-14)
    # vmap over parameter sets
    ks = jnp.array([0.4, 0.7, 1.1])
    vm, vc = jax.vmap(lambda k: emulator.predict(t, {"k": k}))(ks)
    assert vm.shape == (3, 6, 2) and vc.shape == (3, 2, 6, 6)
    np.testing.assert_allclose(vm[1], mean, rtol=1e-10, atol=1e-12)
    # grad matches central finite differences (a smooth function of k)
    f = lambda k: jnp.sum(emulator.predict(t, {"k": k})[0][:, 0])  # noqa: E731
    g = float(jax.grad(f)(0.7))
    h = 1e-5
    fd = (float(f(0.7 + h)) - float(f(0.7 - h))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    assert g < 0  # faster decay, smaller x
    # the noise adds the fitted noise variance (original units) to the diagonal
    _, cn = emulator.predict(t, {"k": 0.7}, include_noise=True)
    extra = np.diagonal(np.asarray(cn - cov), axis1=1, axis2=2)
    np.testing.assert_allclose(
        extra, np.broadcast_to((emulator.noise * emulator.output_scale**2)[:, None], (2, 6)),
        rtol=1e-8,
    )


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_modular_calibration_recovers_k(emulator):
    rng = np.random.default_rng(3)
    t = np.linspace(0.2, 3.8, 8)
    truth = np.stack([np.exp(-K_TRUE * t), t * np.exp(-K_TRUE * t)], axis=1)
    data = probde.TimeSeries(t, truth + SIGMA * rng.standard_normal(truth.shape),
                             observables=("x", "flux"))
    model = probde.Model(emulator, params={"k": dist.Uniform(0.2, 1.5)}, initial_state=None,
                         observation=probde.noise.Normal(sigma=SIGMA))
    assert model.emulator is emulator and model.emulation == "modular"
    res = probde.infer(model, data, probde.NUTS(num_chains=1, num_warmup=200, num_samples=200),
                       seed=0, num_prior_samples=0, progress_bar=False)
    k = res.idata["posterior"]["k"].values.ravel()
    lo, hi = np.quantile(k, [0.005, 0.995])
    assert lo < K_TRUE < hi, (lo, hi)
    # informative: the prior's sd is 0.38; 16 points at 2% noise pin k to a few percent
    assert k.std() < 0.1, k.std()


def test_bad_input(emulator):
    with pytest.raises(ValueError,
                       match="DeepGPEmulator.predict takes hyper=None.*needs GPEmulator"):
        emulator.predict(TIMES, {"k": 0.5}, {"lengthscale": 1.0})
    with pytest.raises(ValueError,
                       match="emulation='joint' needs a probde.GPEmulator.*DeepGPEmulator"):
        probde.Model(emulator, {"k": dist.Uniform(0.2, 1.5)}, None,
                     probde.noise.Normal(sigma=SIGMA), emulation="joint")
    with pytest.raises(ValueError,
                       match="initial_state must be None when dynamics is a probde.DeepGPEmulator"):
        probde.Model(emulator, {"k": dist.Uniform(0.2, 1.5)}, jnp.array([1.0]),
                     probde.noise.Normal(sigma=SIGMA))
    with pytest.raises(ValueError, match=r"theta is missing the emulator's parameters \['k'\]"):
        emulator.predict(TIMES, {"r": 0.5})


_TIMES4 = np.linspace(0.0, 1.0, 4)
_DESIGN5 = latin_hypercube({"k": (0.5, 2.0)}, 5, seed=0)
_OUTPUTS = np.exp(-_DESIGN5["k"][:, None] * _TIMES4[None])


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"layers": 0}, ValueError, "layers must be at least 1; got 0"),
        ({"layers": 1.5}, TypeError, "layers must be an integer; got"),
        ({"num_features": 0}, ValueError, "num_features must be a positive integer; got 0"),
        ({"width": 0}, ValueError, "width must be None or a positive integer"),
        ({"outputs": _OUTPUTS[:, :3]}, ValueError, r"outputs must have shape \(n, T, O\) = "
         r"\(5, 4, O\) for 5 runs at 4 times; got shape \(5, 3, 1\)"),
        ({"times": _TIMES4[::-1]}, ValueError, "times must be strictly increasing"),
        ({"held_out": 0.8}, ValueError, "held_out=0.8 holds out 4 of 5 runs, leaving 1 to fit"),
        ({"num_draws": 1}, ValueError, "num_draws must be at least 2"),
        ({"batch_size": 100}, ValueError, "batch_size must be at most the 16 training points"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate must be a positive finite number"),
    ],
)
def test_from_runs_rejects_bad_arguments(arguments, error, match):
    runs = {"times": _TIMES4, "design": _DESIGN5, "outputs": _OUTPUTS}
    with pytest.raises(error, match=match):
        probde.DeepGPEmulator.from_runs(**{**runs, **arguments})


def test_fit_rejects_a_non_function():
    with pytest.raises(TypeError, match="simulator must be a function"):
        probde.DeepGPEmulator.fit("not a function", _TIMES4, _DESIGN5)


def test_short_fit_warns_at_the_caller():
    # The fit's loss trace is judged by probde.SVI's rules; 50 steps are too few to tell,
    # and the warning points at this file, not at probde.
    with pytest.warns(UserWarning, match="DeepGPEmulator's SVI fit has not converged: 50 "
                      "steps are too few") as caught:
        probde.DeepGPEmulator.from_runs(_TIMES4, _DESIGN5, _OUTPUTS, num_features=10,
                                        num_steps=50, num_draws=4, held_out=0.0,
                                        progress_bar=False)
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]


def test_loss_trace_checks():
    from probde.discrepancy.deep_emulator_fit import _check_loss_trace

    rng = np.random.default_rng(0)
    none = np.zeros(1000, bool)
    # falling to 50, then jumping to 80: the rise, and which guide was kept
    up = np.concatenate([np.linspace(100.0, 50.0, 500), np.full(500, 80.0)])
    up = up + rng.normal(size=1000)
    with pytest.warns(UserWarning, match=r"ended at a worse loss than it had reached: .* "
                      r"keeps the guide averaged over steps 450-499"):
        _check_loss_trace(up, none, 450)
    # still falling
    with pytest.warns(UserWarning, match="the loss was still falling at the end of the 1000"):
        _check_loss_trace(np.linspace(100.0, 50.0, 1000), none, None)
    # a fifth of the steps skipped (the converged rest passes)
    skipped = np.arange(1000) % 5 == 0
    with pytest.warns(UserWarning, match="200 of 1000 steps were skipped") as caught:
        _check_loss_trace(10.0 + rng.normal(size=1000), skipped, None)
    assert len(caught) == 1
    # a converged trace passes silently (warnings are errors in the tests)
    _check_loss_trace(10.0 + rng.normal(size=1000), none, None)
