"""No host callbacks in probde's compiled programs (so JAX can keep them in its persistent
cache, tests/test_compile_cache.py), with nothing lost:

- equinox's runtime checks inside diffrax become NaNs in probde's solves only
  (`probde/dynamics/_diffeqsolve.py`): a user's own diffrax code, traced before or after,
  keeps them, and a user who sets `EQX_ON_ERROR` keeps equinox's behaviour;
- rejected proposals are counted in the sampler's state (`probde/model/report.py`,
  `probde/inference/failures.py`), and the count equals what the host callback counts
  (`Model.numpyro_model(on_failure=...)`) over the same transitions, exactly.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC
from numpyro.infer import NUTS as NumpyroNUTS

import probde
from probde.inference.failures import REJECTED_TOTAL, CountingNUTS
from probde.model.report import count_rejections, note_rejection, vmap_counted

from conftest import decay_at_failure_edge

DECAY = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
TIMES = jnp.array([0.5, 1.0, 2.0])


def _callbacks(fn, *args) -> int:
    """Host callbacks in the program `fn(*args)` traces to (nested programs included)."""
    text = str(jax.make_jaxpr(fn)(*args))
    return sum(text.count(name) for name in ("pure_callback", "io_callback", "debug_callback"))


def _probde_solve(times):
    return probde.solve(DECAY, jnp.array([1.0]), {"k": 0.7}, times, t0=0.0).ys


def _users_solve(times):
    # the same solve written with diffrax directly (a user's own code)
    term = diffrax.ODETerm(lambda t, y, args: -0.7 * y)
    return diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, times[-1], 0.1, jnp.array([1.0]),
                               saveat=diffrax.SaveAt(ts=times),
                               stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
                               throw=False).ys


# ------------------------------------------------------------- equinox's runtime checks
def test_probde_solves_have_no_callbacks_and_users_keep_theirs():
    # Traced save times: diffrax checks them at run time (a callback under equinox's
    # default). The user's solve, traced before and after probde's with the same shapes,
    # keeps its checks; probde's has none.
    assert _callbacks(_users_solve, TIMES) > 0
    assert _callbacks(_probde_solve, TIMES) == 0
    assert _callbacks(_users_solve, TIMES) > 0  # nothing leaked into equinox's trace cache
    assert _callbacks(jax.grad(lambda t: jnp.sum(_probde_solve(t))), TIMES) == 0


def test_a_failed_check_is_a_failed_solve_not_an_error():
    # t0 after the first save time, known only at run time: diffrax's check fails; the
    # solve reports ok=False (the proposal would be rejected) instead of raising.
    def run(t0):
        return probde.solve(DECAY, jnp.array([1.0]), {"k": 0.7}, TIMES, t0=t0).ok

    assert bool(jax.jit(run)(0.0))
    assert not bool(jax.jit(run)(0.75))


def test_the_users_eqx_on_error_stands(monkeypatch):
    # (a new ODE: probde's solves of DECAY are already traced and kept by its jit)
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    monkeypatch.setenv("EQX_ON_ERROR", "raise")
    assert _callbacks(lambda t: probde.solve(ode, jnp.array([1.0]), {"k": 0.7}, t,
                                             t0=0.0).ys, TIMES) > 0


# ------------------------------------------------------------- the carried count
def test_count_rejections_through_loops_grad_and_vmap():
    def model_like(x):
        note_rejection(x > 1.0)
        return x**2

    def transition(xs):
        def body(i, acc):
            return acc + jax.grad(model_like)(xs[i])
        total = jax.lax.fori_loop(0, xs.shape[0], body, 0.0)
        return total + jnp.sum(vmap_counted(model_like, xs))

    xs = jnp.array([0.5, 1.5, 2.0, -3.0])
    out, n = jax.jit(lambda v: count_rejections(transition, v))(xs)
    assert int(n) == 4  # two rejected points, seen by the loop and by the vmap
    assert float(out) == pytest.approx(2 * float(jnp.sum(xs)) + float(jnp.sum(xs**2)))
    # per chain under vmap, each chain with its own counter
    _, per_chain = jax.vmap(lambda v: count_rejections(transition, v))(jnp.stack([xs, xs / 10]))
    assert per_chain.tolist() == [4, 0]
    # outside a counting transition nothing is counted and nothing fails
    assert float(jax.jit(model_like)(2.0)) == 4.0


def _callback_counted_model():
    model, data = decay_at_failure_edge()
    calls = []
    fn = model.numpyro_model(model.prepare(data),
                             on_failure=lambda r: calls.append(int(np.sum(r))))
    return fn, calls


def test_nuts_count_equals_the_callback_count_transition_by_transition():
    # The same transitions counted two ways: the host callback (the reference) and the
    # count carried in the kernel's state. Initialisation (outside any transition) is
    # counted by the callback only, so the comparison starts after it.
    fn, calls = _callback_counted_model()
    kernel = CountingNUTS(fn)
    kwargs = {"observed": True}
    state = kernel.init(jax.random.PRNGKey(2), 60, None, (), kwargs)
    before = sum(calls)
    step = jax.jit(lambda s: kernel.sample(s, (), kwargs))
    per_transition = []
    for _ in range(100):  # 60 warmup (adaptation windows included) + 40 sampling
        state = step(state)
        per_transition.append(int(state.rejected))
    jax.effects_barrier()
    assert int(getattr(state, REJECTED_TOTAL)) == sum(per_transition) == sum(calls) - before
    assert sum(per_transition) > 20  # the model does fail often


def test_counting_nuts_draws_numpyros_chains():
    model, data = decay_at_failure_edge()
    fn = model.numpyro_model(model.prepare(data))
    runs = []
    for kernel in (NumpyroNUTS(fn), CountingNUTS(fn)):
        mcmc = MCMC(kernel, num_warmup=50, num_samples=50, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(4), observed=True)
        runs.append(np.asarray(mcmc.get_samples()["k"]))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
@pytest.mark.filterwarnings("ignore:.*proposals were rejected")
def test_every_chain_method_counts_the_same():
    model, data = decay_at_failure_edge()
    counts = {}
    for chain_method in ("sequential", "vectorized", "parallel"):
        method = probde.NUTS(num_chains=2, num_warmup=60, num_samples=60,
                             chain_method=chain_method)
        result = probde.infer(model, data, method, seed=0, num_prior_samples=0)
        per_draw = result.idata["sample_stats"]["rejected"].values
        assert per_draw.shape == (2, 60)
        assert 0 < per_draw.sum() <= result.solver_failures
        counts[chain_method] = (result.solver_failures, per_draw.tolist())
    assert counts["sequential"] == counts["vectorized"] == counts["parallel"]


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")
def test_random_walk_count_equals_the_callback_count():
    fn, calls = _callback_counted_model()
    method = probde.RandomWalkMetropolis(num_chains=1, num_warmup=100, num_samples=100)
    kernel = method.kernel(fn)
    kwargs = {"observed": True}
    state = kernel.init(jax.random.PRNGKey(1), 100, None, (), kwargs)
    before = sum(calls)
    step = jax.jit(lambda s: kernel.sample(s, (), kwargs))
    for _ in range(200):
        state = step(state)
    jax.effects_barrier()
    assert int(state.rejected_total) == sum(calls) - before > 10


@pytest.mark.filterwarnings("ignore:SVI")  # skipped steps, an unconverged short fit
def test_svi_counts_the_rejections_of_every_particle():
    model, data = decay_at_failure_edge()
    one, four = (probde.infer(model, data, probde.SVI(guide="normal", num_steps=100,
                                                      num_draws=10, num_particles=n),
                              seed=0, num_prior_samples=0) for n in (1, 4))
    assert one.solver_failures > 0
    assert four.solver_failures > one.solver_failures  # four draws per step, four times the
    # chances (the same run otherwise: same start, same number of steps)
