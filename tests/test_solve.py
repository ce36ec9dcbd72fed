"""`probde.solve`: closed forms, a stiff reference, failures as values, gradients."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probde

TIMES = jnp.linspace(0.0, 5.0, 11)
TIGHT = probde.Solver(rtol=1e-10, atol=1e-12, max_steps=100_000)


def decay(t, y, theta):
    return -theta["k"] * y


def logistic(t, y, theta):
    return theta["r"] * y * (1.0 - y / theta["K"])


def test_exponential_decay_matches_closed_form():
    ode = probde.ODE(decay, state_names=("x",))
    traj = probde.solve(ode, jnp.array([2.0]), {"k": 0.7}, TIMES, solver=TIGHT)
    assert bool(traj.ok)
    np.testing.assert_allclose(traj.ys[:, 0], 2.0 * np.exp(-0.7 * np.asarray(TIMES)), rtol=1e-8)
    assert int(traj.num_steps) > 0 and int(traj.num_rejected_steps) >= 0


def test_logistic_matches_closed_form_from_earlier_t0():
    ode = probde.ODE(logistic, state_names=("n",))
    r, K, n0, t0 = 1.3, 10.0, 0.5, -1.0
    traj = probde.solve(ode, jnp.array([n0]), {"r": r, "K": K}, TIMES, solver=TIGHT, t0=t0)
    t = np.asarray(TIMES) - t0
    exact = K / (1.0 + (K / n0 - 1.0) * np.exp(-r * t))
    np.testing.assert_allclose(traj.ys[:, 0], exact, rtol=1e-8)


def test_linear_system_matches_matrix_exponential():
    from scipy.linalg import expm

    A = np.array([[-0.5, 1.0], [-1.0, -0.2]])
    ode = probde.ODE(lambda t, y, th: th["A"] @ y, state_names=("p", "q"))
    y0 = np.array([1.0, 0.0])
    traj = probde.solve(ode, jnp.asarray(y0), {"A": jnp.asarray(A)}, TIMES, solver=TIGHT)
    exact = np.stack([expm(A * t) @ y0 for t in np.asarray(TIMES)])
    np.testing.assert_allclose(traj.ys, exact, rtol=1e-8, atol=1e-12)


def robertson(t, y, theta):
    y1, y2, y3 = y
    return jnp.stack(
        [
            -theta["k1"] * y1 + theta["k3"] * y2 * y3,
            theta["k1"] * y1 - theta["k2"] * y2**2 - theta["k3"] * y2 * y3,
            theta["k2"] * y2**2,
        ]
    )


def test_robertson_stiff_matches_published_reference():
    # Reference values at t = 40 and t = 4e5 from Hairer & Wanner, "Solving ODEs II" (the
    # ROBER problem; the same values appear in the test sets of Mazzia & Magherini).
    ode = probde.ODE(robertson, state_names=("y1", "y2", "y3"))
    theta = {"k1": 0.04, "k2": 3e7, "k3": 1e4}
    solver = probde.Solver(diffrax.Kvaerno5(), rtol=1e-10, atol=1e-14, max_steps=100_000)
    traj = probde.solve(ode, jnp.array([1.0, 0.0, 0.0]), theta, jnp.array([40.0, 4e5]),
                        solver=solver, t0=0.0)
    assert bool(traj.ok)
    np.testing.assert_allclose(traj.ys[0], [0.7158270687, 9.185534764e-6, 0.2841637457], rtol=1e-6)
    np.testing.assert_allclose(traj.ys[1], [4.93828e-3, 1.98500e-8, 0.9950617], rtol=2e-5)
    np.testing.assert_allclose(jnp.sum(traj.ys, axis=1), 1.0, rtol=1e-9)


def test_robertson_explicit_solver_fails_as_value_under_jit():
    ode = probde.ODE(robertson, state_names=("y1", "y2", "y3"))
    theta = {"k1": 0.04, "k2": 3e7, "k3": 1e4}
    solver = probde.Solver(diffrax.Tsit5(), max_steps=200)
    f = jax.jit(lambda th: probde.solve(ode, jnp.array([1.0, 0.0, 0.0]), th,
                                        jnp.array([1.0, 1e3]), solver=solver, t0=0.0))
    traj = f(theta)
    assert not bool(traj.ok)
    assert int(traj.num_steps) == 200


def lotka_volterra(t, z, theta):
    u, v = z
    return jnp.stack([(theta["alpha"] - theta["beta"] * v) * u,
                      (-theta["gamma"] + theta["delta"] * u) * v])


LV = probde.ODE(lotka_volterra, state_names=("hare", "lynx"))
LV_THETA = {"alpha": 0.55, "beta": 0.028, "gamma": 0.8, "delta": 0.024}
LV_TIMES = jnp.arange(0.0, 21.0)


def _objective(solver):
    def f(y0, theta):
        traj = probde.solve(LV, y0, theta, LV_TIMES, solver=solver)
        return jnp.sum(jnp.log(traj.ys) ** 2)

    return jax.jit(jax.grad(f, argnums=(0, 1)))


def test_forward_sensitivity_gradient_equals_reverse_and_finite_differences():
    y0 = jnp.array([34.0, 5.9])
    fwd = probde.Solver(adjoint=probde.ForwardSensitivity(), rtol=1e-10, atol=1e-10)
    rev = probde.Solver(adjoint=diffrax.RecursiveCheckpointAdjoint(), rtol=1e-10, atol=1e-10)
    g_fwd = _objective(fwd)(y0, LV_THETA)
    g_rev = _objective(rev)(y0, LV_THETA)
    for a, b in zip(jax.tree.leaves(g_fwd), jax.tree.leaves(g_rev), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7)

    @jax.jit
    def value(y0, theta):
        return jnp.sum(jnp.log(probde.solve(LV, y0, theta, LV_TIMES, solver=fwd).ys) ** 2)

    for name in LV_THETA:
        h = 1e-6 * LV_THETA[name]
        up = dict(LV_THETA, **{name: LV_THETA[name] + h})
        dn = dict(LV_THETA, **{name: LV_THETA[name] - h})
        fd = (float(value(y0, up)) - float(value(y0, dn))) / (2 * h)
        np.testing.assert_allclose(g_fwd[1][name], fd, rtol=1e-5)


def test_stiff_forward_sensitivity_gradient_equals_reverse():
    ode = probde.ODE(robertson, state_names=("y1", "y2", "y3"))
    theta = {"k1": 0.04, "k2": 3e7, "k3": 1e4}
    times = jnp.array([1.0, 10.0, 100.0])

    def grads(adjoint):
        solver = probde.Solver(diffrax.Kvaerno5(), rtol=1e-10, atol=1e-12, adjoint=adjoint,
                               max_steps=100_000)

        def f(th):
            return jnp.sum(probde.solve(ode, jnp.array([1.0, 0.0, 0.0]), th, times,
                                        solver=solver, t0=0.0).ys[:, 0])

        return jax.grad(f)(theta)

    g_fwd = grads(probde.ForwardSensitivity())
    g_rev = grads(diffrax.RecursiveCheckpointAdjoint())
    for name in theta:
        np.testing.assert_allclose(g_fwd[name], g_rev[name], rtol=1e-6)


def test_failed_solve_gives_finite_zero_gradient_with_forward_sensitivity():
    solver = probde.Solver(adjoint=probde.ForwardSensitivity(), max_steps=3)

    def f(theta):
        traj = probde.solve(LV, jnp.array([34.0, 5.9]), theta, LV_TIMES, solver=solver)
        return jnp.where(traj.ok, jnp.sum(jnp.where(traj.ok, traj.ys, 1.0)), 0.0)

    g = jax.grad(f)(LV_THETA)
    assert all(bool(jnp.isfinite(v)) and float(v) == 0.0 for v in g.values())


def test_auto_adjoint_choice_depends_on_size_and_solver():
    solver = probde.Solver()
    assert isinstance(solver.resolve_adjoint(8), probde.ForwardSensitivity)
    assert isinstance(solver.resolve_adjoint(1000), diffrax.RecursiveCheckpointAdjoint)
    # an implicit solver's Newton system would span states and sensitivities
    stiff = probde.Solver(diffrax.Kvaerno5())
    assert isinstance(stiff.resolve_adjoint(8), diffrax.RecursiveCheckpointAdjoint)


def test_solve_vmaps_over_parameters():
    ode = probde.ODE(decay, state_names=("x",))
    ks = jnp.array([0.1, 0.5, 1.0])
    trajs = jax.vmap(lambda k: probde.solve(ode, jnp.array([1.0]), {"k": k}, TIMES, solver=TIGHT))(ks)
    np.testing.assert_allclose(trajs.ys[:, -1, 0], np.exp(-np.asarray(ks) * 5.0), rtol=1e-8)
    assert trajs.ok.shape == (3,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y0": jnp.array([1.0, 2.0])}, r"y0 must have shape \(1,\)"),
        ({"times": jnp.array([0.0, 2.0, 1.0])}, "strictly increasing; got 1.0 after 2.0 at index 2"),
        ({"times": jnp.array([0.0, jnp.inf])}, "times must be finite"),
        ({"t0": 3.0}, "t0 must not be after the first time"),
    ],
)
def test_solve_bad_input(kwargs, match):
    ode = probde.ODE(decay, state_names=("x",))
    args = {"y0": jnp.array([1.0]), "times": TIMES, "t0": None} | kwargs
    with pytest.raises(ValueError, match=match):
        probde.solve(ode, args["y0"], {"k": 1.0}, args["times"], t0=args["t0"])


def test_ode_and_solver_bad_input():
    with pytest.raises(TypeError, match="vector_field must be a callable"):
        probde.ODE(3.0, state_names=("x",))
    with pytest.raises(ValueError, match="state_names must be unique"):
        probde.ODE(decay, state_names=("x", "x"))
    with pytest.raises(TypeError, match="state_names must be a sequence of strings"):
        probde.ODE(decay, state_names="x")
    with pytest.raises(TypeError, match="solver must be a diffrax solver"):
        probde.Solver("tsit5")
    with pytest.raises(ValueError, match="rtol must be a positive number; got -1"):
        probde.Solver(rtol=-1)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        probde.Solver(max_steps=0)
    with pytest.raises(TypeError, match="adjoint must be"):
        probde.Solver(adjoint="forward")


# ------------------------------------------------ the user's functions: clear errors
def _lv_list(t, z, theta):
    u, v = z
    return [(theta["alpha"] - theta["beta"] * v) * u, (-theta["gamma"] + theta["delta"] * u) * v]


def _lv_tuple(t, z, theta):
    return tuple(_lv_list(t, z, theta))


def _lv_numpy(t, z, theta):
    u, v = z
    return jnp.stack([(np.exp(np.log(theta["alpha"])) - theta["beta"] * v) * u,
                      (-theta["gamma"] + theta["delta"] * u) * v])


def _lv_python_if(t, z, theta):
    if theta["alpha"] > 0:
        return lotka_volterra(t, z, theta)
    return -z


_BAD_VECTOR_FIELDS = {
    "list": (_lv_list, TypeError,
             r"vector_field must return one JAX array of shape \(2,\); got a Python list of 2 "
             r"elements from `_lv_list`\. Return jnp\.stack\(\[\.\.\.\]\) or jnp\.array"),
    "tuple": (_lv_tuple, TypeError, r"got a Python tuple of 2 elements .*jnp\.stack"),
    "numpy": (_lv_numpy, TypeError,
              r"vector_field calls NumPy on a traced value in `_lv_numpy` .*Use jax\.numpy "
              r"instead of numpy inside vector_field \(jnp\.exp, not np\.exp\)"),
    "python_if": (_lv_python_if, TypeError,
                  r"vector_field turns a traced value into a Python value in `_lv_python_if`"
                  r".*jnp\.where"),
    "shape": (lambda t, z, th: jnp.ones(3), ValueError,
              r"vector_field must return shape \(2,\) \(one value per state \('hare', 'lynx'\)\);"
              r" got shape \(3,\)"),
    "dict": (lambda t, z, th: {"hare": z[0], "lynx": z[1]}, TypeError,
             r"got a dict with keys \['hare', 'lynx'\]\. Return a jax\.numpy array"),
}


@pytest.mark.parametrize("under_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", _BAD_VECTOR_FIELDS)
def test_bad_vector_field_is_a_clear_error(case, under_jit):
    # The check is abstract (jax.eval_shape), so the same error comes eagerly and at trace
    # time under jit.
    fn, error, match = _BAD_VECTOR_FIELDS[case]
    ode = probde.ODE(fn, state_names=("hare", "lynx"))

    def run(theta):
        return probde.solve(ode, jnp.array([34.0, 5.9]), theta, LV_TIMES)

    with pytest.raises(error, match=match):
        (jax.jit(run) if under_jit else run)(LV_THETA)


def test_missing_parameter_keyerror_propagates_unchanged():
    # The model layer turns it into "params defines no prior for ...".
    theta = {k: v for k, v in LV_THETA.items() if k != "delta"}
    with pytest.raises(KeyError, match="delta"):
        probde.solve(LV, jnp.array([34.0, 5.9]), theta, LV_TIMES)


def test_check_vector_field_is_abstract_and_remembered():
    calls = []

    def field(t, y, theta):
        calls.append(type(y).__name__)
        return -theta["k"] * y

    ode = probde.ODE(field, state_names=("x",))
    solve = probde.solve(ode, jnp.array([1.0]), {"k": 0.5}, TIMES)
    assert bool(solve.ok) and calls and all(name != "ArrayImpl" for name in calls)
    traced = len(calls)
    # A second eager solve of the same shapes neither checks nor compiles again.
    probde.solve(ode, jnp.array([2.0]), {"k": 0.7}, TIMES)
    assert len(calls) == traced
    out = probde.dynamics.check_vector_field(field, "vector_field", 0.0, jnp.ones(1),
                                             {"k": 0.5}, (1,))
    assert out.shape == (1,) and len(calls) == traced + 1  # other dtypes: traced once more


def test_sde_drift_and_diffusion_get_the_same_checks():
    good = lambda t, x, th: -th["k"] * x  # noqa: E731
    noise = lambda t, x, th: jnp.array([0.3])  # noqa: E731
    cases = [
        (probde.SDE(lambda t, x, th: [-th["k"] * x[0]], noise, ("x",)), TypeError,
         r"drift must return one JAX array of shape \(1,\); got a Python list of 1 element"),
        (probde.SDE(good, lambda t, x, th: [0.3], ("x",)), TypeError,
         r"diffusion must return one JAX array; got a Python list of 1 element"),
        (probde.SDE(lambda t, x, th: -np.exp(th["k"]) * x, noise, ("x",)), TypeError,
         r"drift calls NumPy on a traced value .*jnp\.exp, not np\.exp"),
        (probde.SDE(good, lambda t, x, th: np.sqrt(th["k"]) * jnp.ones(1), ("x",)), TypeError,
         r"diffusion calls NumPy on a traced value"),
        (probde.SDE(good, lambda t, x, th: jnp.ones(2), ("x",)), ValueError,
         r"diffusion must return shape \(1,\) \(diagonal noise\) or \(1, W\)"),
    ]
    for sde, error, match in cases:
        with pytest.raises(error, match=match):
            sde.check(jnp.array([1.0]), {"k": 0.5})
        with pytest.raises(error, match=match):
            probde.simulate(sde, jnp.array([1.0]), {"k": 0.5}, TIMES, jax.random.PRNGKey(0))
    with pytest.raises(KeyError, match="k"):
        probde.SDE(good, noise, ("x",)).check(jnp.array([1.0]), {})


# ------------------------------------------- simulate returns what solve returns
OU_SDE = probde.SDE(lambda t, x, th: -th["k"] * x, lambda t, x, th: jnp.stack([th["s"]]),
                    state_names=("x",))


def test_simulate_returns_a_trajectory_like_solve():
    theta = {"k": jnp.asarray(0.5), "s": jnp.asarray(0.3)}
    times = jnp.array([0.0, 0.5, 1.5, 3.0])
    path = probde.simulate(OU_SDE, jnp.array([1.0]), theta, times, jax.random.PRNGKey(3),
                           num_steps=7)
    traj = probde.solve(probde.ODE(OU_SDE.drift, ("x",)), jnp.array([1.0]), theta, times)
    assert type(path) is type(traj) is probde.Trajectory
    for name in ("ts", "ys", "ok", "num_steps", "num_accepted_steps", "num_rejected_steps"):
        a, b = getattr(path, name), getattr(traj, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
    assert path.stats.keys() == traj.stats.keys()
    np.testing.assert_array_equal(path.ts, times)
    assert bool(path.ok) and float(path.ys[0, 0]) == 1.0  # times[0] is t0: x0 itself
    # Fixed steps: 7 per record interval; none from t0 to times[0] when they are equal.
    assert int(path.num_steps) == int(path.num_accepted_steps) == 7 * 3
    assert int(path.num_rejected_steps) == 0
    earlier = probde.simulate(OU_SDE, jnp.array([1.0]), theta, times, jax.random.PRNGKey(3),
                              num_steps=7, t0=-1.0)
    assert int(earlier.num_steps) == 7 * 4


def test_simulate_paths_is_the_tuple_form_of_simulate():
    from probde.dynamics.sde import simulate_paths

    theta = {"k": jnp.asarray(0.5), "s": jnp.asarray(0.3)}
    keys = jax.random.split(jax.random.PRNGKey(4), 3)

    def both(key):
        path = probde.simulate(OU_SDE, jnp.array([1.0]), theta, TIMES, key, num_steps=4)
        xs, ok = simulate_paths(OU_SDE, jnp.array([1.0]), theta, TIMES, key, num_steps=4)
        return path, xs, ok

    path, xs, ok = jax.jit(jax.vmap(both))(keys)
    assert path.ys.shape == xs.shape == (3, TIMES.shape[0], 1) and path.ok.shape == (3,)
    np.testing.assert_array_equal(path.ys, xs)
    np.testing.assert_array_equal(path.ok, ok)
    np.testing.assert_array_equal(path.num_steps, 4 * (TIMES.shape[0] - 1))
