"""`probde.RandomWalkMetropolis`: exact posteriors, pseudo-marginal exactness with a noisy
likelihood, covariance adaptation, argument checks and reproducibility."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import probde
from conftest import Z_MAX
from probde.model import auxiliary

# ------------------------------------------------------------- conjugate normal model
# mu ~ N(0, 1), y_i ~ N(mu, 1), i = 1..20: the posterior is N(sum(y) / 21, 1 / 21).
Y = np.random.default_rng(1).normal(0.7, 1.0, 20)
POST_MEAN = Y.sum() / (len(Y) + 1)
POST_SD = 1 / np.sqrt(len(Y) + 1)


def normal_model(data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)


def exact_log_density(mu):
    """log p(mu) + log p(y | mu): the target in the (identity) unconstrained space."""
    mu = np.asarray(mu)[..., None]
    loglik = (-0.5 * (Y - mu) ** 2 - 0.5 * np.log(2 * np.pi)).sum(-1)
    return -0.5 * mu[..., 0] ** 2 - 0.5 * np.log(2 * np.pi) + loglik


def noisy_model(s):
    """The same posterior with the likelihood given by an unbiased random estimate:
    `log L + s z - s^2 / 2`, z ~ N(0, 1) drawn from the model's PRNG key, has
    E[exp(.)] = L. Pseudo-marginal MCMC targets the exact posterior of mu."""

    def model(data):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        if data is None:
            return
        key = numpyro.prng_key()
        # `probde.infer` evaluates numpyro's log_likelihood without a seed handler.
        z = 0.0 if key is None else jax.random.normal(key)
        loglik = dist.Normal(mu, 1.0).log_prob(data).sum()
        numpyro.factor("ll", loglik + s * z - s**2 / 2)

    return model


def assert_matches(x, mean, sd, name=""):
    """|mean - exact| and |sd - exact| below Z_MAX Monte Carlo standard errors."""
    mcse_mean = float(az.mcse(x, method="mean"))
    mcse_sd = float(az.mcse(x, method="sd"))
    assert abs(float(x.mean()) - mean) / mcse_mean < Z_MAX, (name, float(x.mean()), mean, mcse_mean)
    assert abs(float(x.std()) - sd) / mcse_sd < Z_MAX, (name, float(x.std()), sd, mcse_sd)


@pytest.fixture(scope="module")
def normal_result():
    method = probde.RandomWalkMetropolis(num_chains=4, num_warmup=1000, num_samples=2000)
    return probde.infer(normal_model, jnp.asarray(Y), method, seed=0, num_prior_samples=0)


def test_conjugate_normal_posterior(normal_result):
    assert_matches(normal_result.idata["posterior"]["mu"], POST_MEAN, POST_SD, "mu")


def test_sample_stats(normal_result):
    stats = normal_result.idata["sample_stats"]
    mu = normal_result.idata["posterior"]["mu"].values
    assert mu.shape == (4, 2000)
    for name in ("lp", "acceptance_rate", "step_size", "diverging", "n_steps"):
        assert stats[name].shape == (4, 2000), name
    assert not stats["diverging"].values.any()
    assert (stats["n_steps"].values == 1).all()
    # lp is the log density at the kept draw (the model is deterministic here)
    np.testing.assert_allclose(stats["lp"].values, exact_log_density(mu), rtol=1e-10)
    acc = stats["acceptance_rate"].values
    assert ((acc >= 0) & (acc <= 1)).all()
    # adaptation reaches the target acceptance rate, and the scale is frozen for sampling
    assert 0.15 < acc.mean() < 0.35
    step = stats["step_size"].values
    assert (step == step[:, :1]).all()


# ------------------------------------------------------------- pseudo-marginal exactness
# s = 1 is the case that tells pseudo-marginal MCMC from "Monte Carlo within Metropolis"
# (re-estimating the current state's likelihood at each step): that inflates the posterior
# sd by about 20% here, more than 7 MCSE; with s = 0.5 by about 5-10%, 2-5 MCSE.
@pytest.mark.parametrize("s", [0.5, 1.0])
def test_pseudo_marginal_noisy_likelihood_gives_exact_posterior(s):
    method = probde.RandomWalkMetropolis(num_chains=4, num_warmup=1000, num_samples=2000)
    result = probde.infer(noisy_model(s), jnp.asarray(Y), method, seed=0, num_prior_samples=0)
    mu = result.idata["posterior"]["mu"]
    assert_matches(mu, POST_MEAN, POST_SD, "mu")
    # The kept estimate's noise, lp - exact log density = s z - s^2 / 2. Under the
    # pseudo-marginal extended target the kept z is N(s, 1) (the density of z tilted by
    # exp(s z - s^2 / 2)), so the noise is N(s^2 / 2, s^2): fresh keys make it vary, and
    # keeping the estimate at the current state makes it biased upward exactly so.
    noise = result.idata["sample_stats"]["lp"] - exact_log_density(mu.values)
    assert_matches(noise, s**2 / 2, s, "noise")
    # A rejected proposal keeps the state and its estimate: lp is never recomputed.
    lp = result.idata["sample_stats"]["lp"].values
    stayed = mu.values[:, 1:] == mu.values[:, :-1]
    assert stayed.any() and (~stayed).any()
    np.testing.assert_array_equal(lp[:, 1:][stayed], lp[:, :-1][stayed])


# ------------------------------------------------------ correlated pseudo-marginal MCMC
def common_noise_model(s):
    """`noisy_model(s)` with its noise `z` from the sampler's common random numbers
    (`probde.model.auxiliary`), from the key when none are supplied."""

    def model(data):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        if data is None:
            return
        spec = {"z": jax.ShapeDtypeStruct((), mu.dtype)}
        u = auxiliary.auxiliary_normals(spec)
        key = numpyro.prng_key()
        z = u["z"] if u is not None else (0.0 if key is None else jax.random.normal(key))
        loglik = dist.Normal(mu, 1.0).log_prob(data).sum()
        numpyro.factor("ll", loglik + s * z - s**2 / 2)

    return model


# The extended target of correlated pseudo-marginal MCMC is p(mu | y) N(z; s, 1): the chain
# on (mu, z) must leave it invariant, with z moved by Crank-Nicolson steps, not redrawn.
def test_correlated_pseudo_marginal_gives_exact_posterior():
    s, rho = 1.5, 0.95
    method = probde.RandomWalkMetropolis(num_chains=4, num_warmup=1000, num_samples=4000,
                                         correlation=rho)
    result = probde.infer(common_noise_model(s), jnp.asarray(Y), method, seed=0,
                          num_prior_samples=0)
    mu = result.idata["posterior"]["mu"]
    assert_matches(mu, POST_MEAN, POST_SD, "mu")
    noise = result.idata["sample_stats"]["lp"] - exact_log_density(mu.values)
    assert_matches(noise, s**2 / 2, s, "noise")
    # The kept noise s z moves by small steps (correlated proposals), not afresh at each
    # accepted move: a jump of z is (rho - 1) z + sqrt(1 - rho^2) eps, of mean square
    # about 0.1 here (0.09 measured), against 1.07 measured for independent estimates.
    z = noise.values / s
    moved = mu.values[:, 1:] != mu.values[:, :-1]
    jump2 = float(np.mean((z[:, 1:] - z[:, :-1])[moved] ** 2))
    assert jump2 < 0.3, jump2
    assert method.kernel(common_noise_model(s))._correlation == rho


def test_correlation_needs_a_model_that_asks_for_common_random_numbers():
    method = probde.RandomWalkMetropolis(num_chains=1, num_warmup=10, num_samples=10,
                                         correlation=0.9)
    with pytest.raises(ValueError, match=r"correlation=0.9 needs a model whose likelihood "
                                         r"estimate runs on common random numbers"):
        probde.infer(noisy_model(1.0), jnp.asarray(Y), method, seed=0, num_prior_samples=0)


# -------------------------------------------------------- starts from an earlier fit
def positive_model(data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, scale), obs=data)


def test_start_from_earlier_draws_sets_the_points_and_the_proposal_covariance():
    rng = np.random.default_rng(5)
    draws = {"mu": rng.normal(0.9, 0.2, (2, 500)),
             "scale": np.exp(rng.normal(-1.0, 0.5, (2, 500)))}
    method = probde.RandomWalkMetropolis(num_chains=3, start=draws)
    kernel = method.kernel(positive_model)
    kernel.find_initial_params(jax.random.split(jax.random.PRNGKey(0), 3),
                               model_kwargs={"data": jnp.asarray(Y)})
    starts = kernel.start_from(draws, jax.random.PRNGKey(1), 3)
    # Each chain starts at one of the draws, in the unconstrained space (log of scale).
    flat = np.stack([draws["mu"].ravel(), np.log(draws["scale"].ravel())], axis=1)
    for c in range(3):
        row = np.array([float(starts["mu"][c]), float(starts["scale"][c])])
        assert np.min(np.abs(flat - row).sum(axis=1)) < 1e-12
    # The proposal covariance is the draws' (sd 0.2 and 0.5, uncorrelated), not the identity.
    cov = kernel._initial_chol @ kernel._initial_chol.T
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), [0.2, 0.5], rtol=0.1)
    assert abs(cov[0, 1]) < 0.01


def test_start_from_a_result_gives_the_exact_posterior():
    earlier = probde.infer(normal_model, jnp.asarray(Y), probde.Laplace(), seed=0,
                           num_prior_samples=0)
    method = probde.RandomWalkMetropolis(num_chains=4, num_warmup=300, num_samples=2000,
                                         start=earlier)
    result = probde.infer(normal_model, jnp.asarray(Y), method, seed=0, num_prior_samples=0)
    assert_matches(result.idata["posterior"]["mu"], POST_MEAN, POST_SD, "mu")


def test_start_must_hold_every_parameter():
    method = probde.RandomWalkMetropolis(num_chains=1, num_warmup=5, num_samples=5,
                                         start={"mu": np.zeros((1, 10))})
    with pytest.raises(ValueError, match=r"start must hold posterior draws of every parameter "
                                         r"of this model; missing \['scale'\]"):
        probde.infer(positive_model, jnp.asarray(Y), method, seed=0, num_prior_samples=0)
    with pytest.raises(TypeError, match="start must be a probde.InferenceResult, .* got str"):
        probde.RandomWalkMetropolis(start="laplace")


# ------------------------------------------------------------- adapted proposal covariance
# A strongly correlated, badly scaled 2-D Gaussian: an isotropic random walk mixes slowly
# along the long axis; the adapted proposal follows the target's covariance.
CORR_MEAN = np.array([1.0, -2.0])
CORR_SD = np.array([0.5, 5.0])
RHO = 0.95
CORR_COV = np.outer(CORR_SD, CORR_SD) * np.array([[1.0, RHO], [RHO, 1.0]])


def correlated_model(data=None):
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(CORR_MEAN), jnp.asarray(CORR_COV)))


def test_correlated_gaussian_and_adapted_covariance():
    method = probde.RandomWalkMetropolis(num_chains=4, num_warmup=2000, num_samples=2000)
    mcmc = method.mcmc(correlated_model)
    mcmc.run(jax.random.PRNGKey(0), extra_fields=("accept_prob",))
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    assert x.shape == (4, 2000, 2)
    for i in range(2):
        assert_matches(x[..., i], CORR_MEAN[i], CORR_SD[i], f"x[{i}]")
    assert abs(np.corrcoef(x.reshape(-1, 2).T)[0, 1] - RHO) < 0.02
    acc = np.asarray(mcmc.get_extra_fields()["accept_prob"])
    assert 0.15 < acc.mean() < 0.35

    # The adapted proposal covariance (per chain) is close to the target's.
    chol = np.asarray(mcmc.last_state.cov_chol)
    for c in range(4):
        cov = chol[c] @ chol[c].T
        sd = np.sqrt(np.diag(cov))
        np.testing.assert_allclose(sd, CORR_SD, rtol=0.3)
        assert abs(cov[0, 1] / (sd[0] * sd[1]) - RHO) < 0.03


# ------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_chains": 0}, ValueError, "num_chains must be a positive integer; got 0"),
        ({"num_chains": 2.0}, ValueError, "num_chains must be a positive integer; got 2.0"),
        ({"num_samples": -1}, ValueError, "num_samples must be a positive integer"),
        ({"thinning": True}, ValueError, "thinning must be a positive integer; got True"),
        ({"num_warmup": -1}, ValueError, "num_warmup must be a non-negative integer; got -1"),
        ({"num_warmup": 1.5}, ValueError, "num_warmup must be a non-negative integer"),
        ({"target_accept": 1.0}, ValueError, r"target_accept must be in \(0, 1\); got 1.0"),
        ({"target_accept": "0.2"}, ValueError, "target_accept must be in"),
        ({"chain_method": "pmap"}, ValueError, "chain_method must be one of .*; got 'pmap'"),
        ({"init_radius": 0.0}, ValueError, "init_radius must be a positive finite number; got 0.0"),
        ({"init_radius": float("inf")}, ValueError, "init_radius must be a positive finite"),
        ({"correlation": 1.0}, ValueError, r"correlation must be a number in \[0, 1\).*got 1.0"),
        ({"correlation": -0.5}, ValueError, r"correlation must be a number in \[0, 1\)"),
        ({"correlation": True}, ValueError, r"correlation must be a number in \[0, 1\)"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        probde.RandomWalkMetropolis(**kwargs)


def test_method_must_be_a_method_object():
    with pytest.raises(TypeError, match="method must be a probde method"):
        probde.infer(normal_model, jnp.asarray(Y), probde.RandomWalkMetropolis)


def test_no_feasible_starting_point_is_a_clear_error():
    def model(data=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("impossible", jnp.where(mu > 100.0, 0.0, -jnp.inf))

    method = probde.RandomWalkMetropolis(num_chains=2, num_warmup=5, num_samples=5)
    with pytest.raises(RuntimeError, match="RandomWalkMetropolis found no feasible starting point"):
        probde.infer(model, None, method, num_prior_samples=0)


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_infeasible_proposals_are_rejected():
    # A hard constraint inside the prior's support: proposals past it are rejections.
    def model(data=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("constraint", jnp.where(mu < 0.0, 0.0, jnp.nan))

    method = probde.RandomWalkMetropolis(num_chains=1, num_warmup=300, num_samples=500)
    result = probde.infer(model, None, method, seed=0, num_prior_samples=0)
    mu = result.idata["posterior"]["mu"].values
    assert mu.shape == (1, 500)
    assert (mu < 0).all()
    assert np.isfinite(result.idata["sample_stats"]["lp"].values).all()


# -------------------------------------------------------------------- reproducibility
@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_same_seed_same_draws():
    method = probde.RandomWalkMetropolis(num_chains=2, num_warmup=100, num_samples=100)

    def run():
        result = probde.infer(noisy_model(0.5), jnp.asarray(Y), method, seed=7, num_prior_samples=0)
        return result.idata["posterior"]["mu"].values, result.idata["sample_stats"]["lp"].values

    (mu_a, lp_a), (mu_b, lp_b) = run(), run()
    np.testing.assert_array_equal(mu_a, mu_b)
    np.testing.assert_array_equal(lp_a, lp_b)
    # chains are seeded differently from one another
    assert not np.array_equal(mu_a[0], mu_a[1])


def test_chain_methods_give_the_same_draws():
    def run(chain_method):
        method = probde.RandomWalkMetropolis(num_chains=2, num_warmup=50, num_samples=50,
                                             chain_method=chain_method)
        samples, stats = method.run(noisy_model(0.5), jax.random.PRNGKey(3), progress_bar=False,
                                    model_kwargs={"data": jnp.asarray(Y)})
        return np.asarray(samples["mu"]), np.asarray(stats["lp"])

    mu, lp = run("parallel")
    assert mu.shape == lp.shape == (2, 50)
    for chain_method in ("sequential", "vectorized"):
        mu_c, lp_c = run(chain_method)
        np.testing.assert_allclose(mu_c, mu, rtol=1e-12)
        np.testing.assert_allclose(lp_c, lp, rtol=1e-12)
