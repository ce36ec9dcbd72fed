"""The model layer's parts: bookkeeping sites never forbid user names, up-front errors on
bad initial states and unused priors, and a discrepancy written by a user plugs in through
the one interface (`probde.discrepancy.AbstractDiscrepancy`)."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

import probde
from probde.discrepancy import AbstractDiscrepancy, DiscrepancyTerm
from probde.discrepancy.gp import observable_index
from probde.model import sites

from conftest import RTOL

DECAY = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
TIMES = np.array([0.5, 1.0, 1.5, 2.0])
DATA = probde.TimeSeries(TIMES, [0.62, 0.35, 0.24, 0.13], observables=("x",))


def _decay_model(**kw):
    args = dict(dynamics=DECAY, params={"k": dist.LogNormal(0.0, 0.5)},
                initial_state=jnp.array([1.0]), observation=probde.noise.Normal(sigma=0.05),
                t0=0.0)
    args.update(kw)
    return probde.Model(**args)


def _solved(k):
    """The decay model's own solve (so the checks below isolate the model's plumbing
    from the solver's tolerance)."""
    traj = probde.solve(DECAY, jnp.array([1.0]), {"k": k}, jnp.asarray(TIMES), t0=0.0)
    return np.asarray(traj.ys[:, 0])


def _normal_ll(mean, values, sigma):
    return float(np.sum(-0.5 * ((values - mean) / sigma) ** 2 - np.log(sigma)
                        - 0.5 * np.log(2 * np.pi)))


@pytest.mark.parametrize("name", ["mu", "y", "trajectory", "discrepancy", "corrected"])
def test_natural_parameter_names_are_free(name):
    """A parameter may be called like a bookkeeping site: its value is the one used."""
    ode = probde.ODE(lambda t, y, th: -th[name] * y, state_names=("x",))
    model = _decay_model(dynamics=ode, params={name: dist.LogNormal(0.0, 0.5)})
    ll = probde.log_likelihood(model, DATA, {name: 1.0})
    expected = _normal_ll(_solved(1.0), DATA.values[:, 0], 0.05)
    assert float(ll) == pytest.approx(expected, rel=RTOL[np.dtype("float64")])


def test_bookkeeping_sites_are_namespaced():
    model = _decay_model()
    fn = model.numpyro_model(model.prepare(DATA))
    with handlers.seed(rng_seed=0):
        tr = handlers.trace(fn).get_trace(observed=True)
    user = {k for k, s in tr.items() if not sites.is_bookkeeping(k)}
    assert user == {"k"}
    assert {sites.OBSERVED, sites.MEAN, sites.TRAJECTORY, sites.REJECTED} <= set(tr)
    assert sites.public(sites.OBSERVED) == "y" and sites.public("k") == "k"


def test_ornstein_uhlenbeck_mean_called_mu():
    """The case a user hit: an OU process whose mean is called `mu` (refused before)."""
    ou = probde.SDE(lambda t, x, th: th["k"] * (th["mu"] - x),
                    lambda t, x, th: jnp.array([0.5]), state_names=("x",), linear=True)
    model = probde.Model(ou, {"k": dist.LogNormal(0.0, 0.5), "mu": dist.Normal(0.0, 1.0)},
                         initial_state=dist.Normal(0.0, 1.0).expand([1]),
                         observation=probde.noise.Normal(sigma=0.2), likelihood=probde.EKF())
    ll = probde.log_likelihood(model, DATA, {"k": 1.0, "mu": 0.3})
    assert np.isfinite(float(ll))


def test_nan_in_fixed_initial_state_is_refused_up_front():
    with pytest.raises(ValueError, match=r"initial_state must be finite; got nan at index "
                                         r"\(1,\) \(state 'b'\)"):
        probde.Model(probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("a", "b")),
                     {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0, jnp.nan]),
                     probde.noise.Normal(sigma=0.1))


def test_unused_prior_warns_and_names_it():
    with pytest.warns(UserWarning, match=r"params \['unused'\] have priors but nothing"):
        _decay_model(params={"k": dist.LogNormal(0.0, 0.5), "unused": dist.Normal(0.0, 1.0)})


def test_parameter_read_only_by_derived_or_initial_state_is_used():
    model = _decay_model(
        params={"k": dist.LogNormal(0.0, 0.5), "x0": dist.LogNormal(0.0, 0.5),
                "half_life_scale": dist.LogNormal(0.0, 0.5)},
        initial_state=lambda th: jnp.stack([th["x0"]]),
        derived={"half_life": lambda th: th["half_life_scale"] * jnp.log(2.0) / th["k"]},
    )
    assert model.source_reads == {"k", "x0", "half_life_scale"}


def test_initial_state_name_clash_is_explained():
    with pytest.raises(ValueError, match="params name 'initial_state' is taken"):
        _decay_model(params={"k": dist.LogNormal(0.0, 0.5),
                             "initial_state": dist.Normal(0.0, 1.0)},
                     initial_state=dist.LogNormal(0.0, 0.5).expand([1]),
                     derived={"d": lambda th: th["initial_state"]})


class ConstantOffset(AbstractDiscrepancy):
    """A discrepancy written outside probde: a constant offset with a Normal prior."""

    def __init__(self, scale):
        self.scale = scale

    def check_model(self, observables, observation):
        pass

    def site_names(self, taken):
        return {"offset": "offset"}

    def observable_index(self, observables):
        return observable_index(None, observables)

    def term(self, inputs):
        offset = numpyro.sample(inputs.names["offset"], dist.Normal(0.0, self.scale))
        E, T = inputs.loc.shape[:2]
        delta = jnp.full((E, T, inputs.index.size), offset)
        return DiscrepancyTerm(delta=delta, delta_new=lambda t, loc: jnp.full(
            loc.shape[:2] + (inputs.index.size,), offset))


def test_a_new_discrepancy_kind_plugs_in_through_the_interface():
    model = _decay_model(discrepancy=ConstantOffset(1.0))
    ll = probde.log_likelihood(model, DATA, {"k": 1.0, "offset": 0.1})
    expected = _normal_ll(_solved(1.0) + 0.1, DATA.values[:, 0], 0.05)
    assert float(ll) == pytest.approx(expected, rel=RTOL[np.dtype("float64")])


def test_solve_and_simulate_return_the_same_kind_of_object():
    traj = probde.solve(DECAY, jnp.array([1.0]), {"k": 1.0}, jnp.asarray(TIMES), t0=0.0)
    ou = probde.SDE(lambda t, x, th: -x, lambda t, x, th: jnp.array([0.1]),
                    state_names=("x",))
    import jax

    paths = probde.simulate(ou, jnp.array([1.0]), {}, jnp.asarray(TIMES),
                            jax.random.PRNGKey(0), t0=0.0)
    assert type(paths) is type(traj)
    assert paths.ys.shape == traj.ys.shape == (TIMES.size, 1)
