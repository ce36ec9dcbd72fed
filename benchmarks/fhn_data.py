"""Synthetic data for the stochastic FitzHugh–Nagumo filter benchmark (numpy only).

Model (Itô SDE, diagonal diffusion)::

    dv = (v - v**3/3 - w + I) dt + s_v dW1
    dw = eps (v + a - b w) dt    + s_w dW2

with a=0.7, b=0.8, eps=0.08, I=0.5, s_v=0.3, s_w=0.1, initial state
x(0) ~ N([-1, 1], 0.1**2 I), and only v observed with Gaussian noise of sd 0.1 at the
times t_k = 2 k, k = 1..N. The path is simulated by Euler–Maruyama with step
``DT_FINE`` = 1e-3 (2000 steps per observation interval).

The random streams are split with ``numpy.random.SeedSequence(seed).spawn(3)``
(initial state, Brownian increments, observation noise), and increments are drawn one
observation interval at a time, so ``simulate_data(M, seed)`` is a prefix of
``simulate_data(N, seed)`` for M < N. Only numpy is imported, so the benchmark on our side
and the reference-library script (a separate environment) regenerate identical data.
"""

import numpy as np

TRUE_PARAMS = {"a": 0.7, "b": 0.8, "eps": 0.08, "I": 0.5, "s_v": 0.3, "s_w": 0.1,
               "obs_sd": 0.1}
M0 = (-1.0, 1.0)          # initial mean at t = 0
P0_SD = 0.1               # initial covariance P0 = P0_SD**2 * I
OBS_DT = 2.0              # observation spacing: t_k = OBS_DT * k, k = 1..N
DT_FINE = 1e-3            # Euler–Maruyama step
STEPS_PER_OBS = 2000      # OBS_DT / DT_FINE


def simulate_path(N, seed=0):
    """Latent states at the observation times: returns (times (N,), states (N, 2))."""
    p = TRUE_PARAMS
    a, b, eps, i_ext, s_v, s_w = p["a"], p["b"], p["eps"], p["I"], p["s_v"], p["s_w"]
    x0_ss, path_ss, _ = np.random.SeedSequence(seed).spawn(3)
    x0 = np.asarray(M0) + P0_SD * np.random.default_rng(x0_ss).standard_normal(2)
    rng = np.random.default_rng(path_ss)
    dt = DT_FINE
    sq = np.sqrt(dt)
    v, w = float(x0[0]), float(x0[1])
    states = np.empty((N, 2))
    for k in range(N):
        z = rng.standard_normal((STEPS_PER_OBS, 2))
        z1 = (s_v * sq * z[:, 0]).tolist()
        z2 = (s_w * sq * z[:, 1]).tolist()
        for j in range(STEPS_PER_OBS):
            dv = (v - v * v * v / 3.0 - w + i_ext) * dt + z1[j]
            dw = eps * (v + a - b * w) * dt + z2[j]
            v += dv
            w += dw
        states[k] = (v, w)
    times = OBS_DT * np.arange(1, N + 1, dtype=float)
    return times, states


def simulate_data(N, seed=0):
    """Observation times t_k = 2k (k = 1..N) and noisy observations of v: (times, v_obs)."""
    times, states = simulate_path(N, seed)
    _, _, obs_ss = np.random.SeedSequence(seed).spawn(3)
    noise = np.random.default_rng(obs_ss).standard_normal(N)
    v_obs = states[:, 0] + TRUE_PARAMS["obs_sd"] * noise
    return times, v_obs


if __name__ == "__main__":
    t, y = simulate_data(5)
    print(t, y)
