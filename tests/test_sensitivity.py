"""Forward sensitivities in one augmented solve, and the unrolled Runge–Kutta stepper.

Rule for the tolerances here (TESTING.md): where two computations are the same discrete
map in a different order (the augmented forward solve with states-only error control and
reverse mode through the same steps), they must agree to floating-point accuracy, 1e-9
relative to each output's largest derivative; where accuracy is at stake, errors are
measured against a solve at rtol = atol = 1e-12.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probde
from probde.dynamics import _unrolled


def lotka_volterra(t, z, theta):
    u, v = z
    return jnp.stack([(theta["alpha"] - theta["beta"] * v) * u,
                      (-theta["gamma"] + theta["delta"] * u) * v])


LV = probde.ODE(lotka_volterra, state_names=("hare", "lynx"))
THETA = {"alpha": 0.55, "beta": 0.028, "gamma": 0.8, "delta": 0.024}
TIMES = jnp.arange(0.0, 21.0)
Y0 = jnp.array([34.0, 5.9])
ROUNDOFF = 1e-9


def jacobian(adjoint, tol, solver=None, theta=THETA):
    """d ys / d (y0, theta) as a (T * S, inputs) matrix."""
    s = probde.Solver(solver or diffrax.Tsit5(), adjoint=adjoint, rtol=tol, atol=tol,
                      max_steps=100_000)

    def ys(y0, th):
        return probde.solve(LV, y0, th, TIMES, solver=s).ys

    jac = jax.jit(jax.jacrev(ys, argnums=(0, 1)))(Y0, theta)
    rows = TIMES.shape[0] * 2
    return np.concatenate([np.asarray(x).reshape(rows, -1) for x in jax.tree.leaves(jac)], axis=1)


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Dopri5(), diffrax.Bosh3()],
                         ids=["Tsit5", "Dopri5", "Bosh3"])
@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_forward_sensitivity_is_the_discrete_derivative_reverse_mode_computes(solver, tol):
    # With the step size controlled on the states only, the augmented solve takes the
    # plain solve's steps, and an explicit Runge-Kutta method commutes with
    # linearisation: the sensitivities are the derivative of the discrete solution, the
    # same numbers reverse mode gets by sweeping back through those steps.
    fwd = jacobian(probde.ForwardSensitivity(), tol, solver)
    rev = jacobian(diffrax.RecursiveCheckpointAdjoint(), tol, solver)
    scale = np.abs(rev).max(axis=1, keepdims=True)
    assert np.all(np.isfinite(fwd))
    assert np.max(np.abs(fwd - rev) / scale) < ROUNDOFF


def test_error_control_on_sensitivities_makes_them_accurate():
    ref = jacobian(diffrax.RecursiveCheckpointAdjoint(), 1e-12)
    scale = np.abs(ref).max(axis=1, keepdims=True)
    tol = 1e-6
    err_states = np.max(np.abs(jacobian(probde.ForwardSensitivity(), tol) - ref) / scale)
    err_all = np.max(np.abs(
        jacobian(probde.ForwardSensitivity(error_control="all"), tol) - ref) / scale)
    # Both are accurate to the solver tolerance times the problem's growth of errors over
    # 20 years (about 100 here); controlling the sensitivities' error too is more accurate.
    assert err_states < 1000 * tol
    assert err_all < 100 * tol
    assert err_all < err_states


def test_forward_sensitivity_gradient_under_vmap_equals_one_at_a_time():
    solver = probde.Solver(adjoint=probde.ForwardSensitivity())

    def loss(alpha):
        th = dict(THETA, alpha=alpha)
        return jnp.sum(jnp.log(probde.solve(LV, Y0, th, TIMES, solver=solver).ys) ** 2)

    alphas = jnp.array([0.5, 0.55, 0.6])
    batched = jax.jit(jax.vmap(jax.grad(loss)))(alphas)
    single = np.array([float(jax.jit(jax.grad(loss))(a)) for a in alphas])
    np.testing.assert_allclose(batched, single, rtol=ROUNDOFF)


def test_value_without_gradient_runs_the_plain_solve():
    solver = probde.Solver(adjoint=probde.ForwardSensitivity())
    plain = probde.Solver(adjoint=diffrax.RecursiveCheckpointAdjoint())
    a = probde.solve(LV, Y0, THETA, TIMES, solver=solver)
    b = probde.solve(LV, Y0, THETA, TIMES, solver=plain)
    np.testing.assert_array_equal(a.ys, b.ys)
    assert int(a.num_steps) == int(b.num_steps)


def test_forward_sensitivity_of_a_vector_field_without_parameters():
    # theta is empty: its flattened vector must take the states' dtype (it came out
    # float32 and the linearisation refused a float64 tangent). d/dy0 of y0 exp(-0.3 t).
    decay = probde.ODE(lambda t, y, th: -0.3 * y, state_names=("x",))
    solver = probde.Solver(adjoint=probde.ForwardSensitivity(), rtol=1e-10, atol=1e-10)
    times = jnp.array([0.5, 1.0, 2.0])
    grad = jax.grad(lambda y0: probde.solve(decay, y0, {}, times, t0=0.0,
                                            solver=solver).ys.sum())(jnp.array([2.0]))
    np.testing.assert_allclose(grad, [np.exp(-0.3 * times).sum()], rtol=1e-8)


def test_error_control_is_checked():
    with pytest.raises(ValueError, match="error_control must be 'states' or 'all'; got 'some'"):
        probde.ForwardSensitivity(error_control="some")
    with pytest.raises(ValueError, match="max_inputs must be a non-negative integer; got -1"):
        probde.ForwardSensitivity(max_inputs=-1)


# ----------------------------------------------------------------- the unrolled stepper
def _solve(solver, y0, saveat):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, th: jnp.concatenate(
            [lotka_volterra(t, y[:2], th), -0.3 * y[2:] + 0.01 * y[:1] * y[2:]])),
        solver, 0.0, 20.0, None, y0, args=THETA, saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-7), max_steps=10_000)


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Dopri5(), diffrax.Dopri8(),
                                    diffrax.Bosh3()],
                         ids=["Tsit5", "Dopri5", "Dopri8 (no FSAL)", "Bosh3"])
def test_unrolled_stepper_takes_diffrax_steps_and_interpolates_the_same(solver):
    # Eight states: wide enough that XLA does not unroll diffrax's own stage loop.
    y0 = jnp.concatenate([Y0, jnp.linspace(1.0, 2.0, 6)])
    saveat = diffrax.SaveAt(ts=jnp.linspace(0.0, 20.0, 37))  # mostly between steps
    ref = jax.jit(lambda y: _solve(solver, y, saveat))(y0)
    out = jax.jit(lambda y: _solve(_unrolled.Unrolled(solver), y, saveat))(y0)
    assert int(out.stats["num_steps"]) == int(ref.stats["num_steps"])
    assert int(out.stats["num_rejected_steps"]) == int(ref.stats["num_rejected_steps"])
    np.testing.assert_allclose(out.ys, ref.ys, rtol=ROUNDOFF)


def test_unrolled_wraps_explicit_runge_kutta_only():
    assert _unrolled.supports(diffrax.Tsit5())
    assert not _unrolled.supports(diffrax.Kvaerno5())
    assert not _unrolled.supports(diffrax.Euler())
    with pytest.raises(TypeError, match="explicit Runge-Kutta"):
        _unrolled.Unrolled(diffrax.Kvaerno5())


def test_second_derivatives_through_forward_sensitivities():
    # Forward mode works through the custom JVP (the Laplace approximation's Hessian):
    # against forward-over-forward through diffrax's ForwardMode at tight tolerances.
    def loss(adjoint):
        s = probde.Solver(adjoint=adjoint, rtol=1e-10, atol=1e-10, max_steps=100_000)

        def f(th):
            return jnp.sum(jnp.log(probde.solve(LV, Y0, th, TIMES, solver=s).ys) ** 2)

        return f

    ours = jax.jit(jax.hessian(loss(probde.ForwardSensitivity())))(THETA)
    ref = jax.jit(jax.jacfwd(jax.jacfwd(loss(diffrax.ForwardMode()))))(THETA)
    a = np.array([[ours[i][j] for j in THETA] for i in THETA])
    b = np.array([[ref[i][j] for j in THETA] for i in THETA])
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())


def test_hessian_through_a_reverse_adjoint_falls_back_to_differences_of_the_gradient():
    # An implicit solver gets diffrax's reverse adjoint, whose checkpointed loops have no
    # forward mode, so jax.hessian cannot trace; the NUTS(init="map") starts and Laplace
    # need a Hessian there all the same. probde's takes central differences of the exact
    # gradient instead. Against forward-over-forward through ForwardMode at tight
    # tolerances; the tolerance is the central differences' truncation error, of order
    # h^2 = 1e-6 (h = MIN_STEP, coordinates of order one) times the third derivative,
    # which here is at most 100 times the largest second derivative.
    from probde.inference.hessian import MIN_STEP, hessian

    def loss(solver, adjoint):
        s = probde.Solver(solver, adjoint=adjoint, rtol=1e-10, atol=1e-10, max_steps=100_000)

        def f(log_theta):
            th = dict(zip(THETA, jnp.exp(log_theta), strict=True))
            return jnp.sum(jnp.log(probde.solve(LV, Y0, th, TIMES, solver=s).ys) ** 2)

        return f

    x = jnp.log(jnp.array(list(THETA.values())))
    stiff = loss(diffrax.Kvaerno5(), diffrax.RecursiveCheckpointAdjoint())
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        jax.jit(jax.hessian(stiff))(x)
    ours = np.asarray(jax.jit(lambda x: hessian(stiff, x))(x))
    ref = np.asarray(jax.jit(jax.jacfwd(jax.jacfwd(loss(diffrax.Tsit5(),
                                                        diffrax.ForwardMode()))))(x))
    np.testing.assert_allclose(ours, ours.T, rtol=ROUNDOFF)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=100 * MIN_STEP**2 * np.abs(ref).max())
    # where forward mode works, the Hessian is jax.hessian's (to rounding)
    plain = loss(diffrax.Tsit5(), probde.ForwardSensitivity())
    np.testing.assert_allclose(jax.jit(lambda x: hessian(plain, x))(x),
                               jax.jit(jax.hessian(plain))(x), rtol=ROUNDOFF)
