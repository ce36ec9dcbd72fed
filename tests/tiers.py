"""Which tests the two shorter tiers leave out.

Three tiers:
- `make test-all` (`tests/run_isolated.py`): every test.
- `make test` (`tests/run_isolated.py --skip-long`), what CI runs: every test except the
  node-id prefixes in `LONG` below, long checks whose code paths shorter tests in this tier
  exercise too (TESTING.md: long checks run in CI "unless they blow the budget"; with them
  the suite took 90 minutes on two cores).
- `make check` (`pytest --check-tier`): every collected test except
- the tests marked `@pytest.mark.slow`,
- the node-id prefixes in `LONG` and in `SLOW` below (a file, a test function with all its
  parametrisations, or one parametrisation written out in full), and
- the parametrisations of the test functions in `CASES` other than those it names.

So a new test is in the fast tier unless someone decides otherwise here, and an entry
that no longer matches a test (a renamed, merged or deleted test or case) fails the
collection of any run that collects its whole file, naming the entry, rather than
silently putting the test back or leaving a dead entry behind.

The fast tier keeps the exact algebra (closed forms, filters and Markov GPs against the
dense Gaussian, likelihoods against scipy), the bad-input tests, one case per family, and
the short posterior checks (NUTS on the exact Gaussian, full-rank SVI and Laplace, random-
walk Metropolis on the conjugate normal). It leaves out what compiles or samples for long:
the other inference runs, the docs pages, fresh processes, and repeated cases of one
algebra. The seconds are CPU seconds per test from a cold compilation cache (one pytest
process, measured December 2026 on the 2-core development machine); a test that shares a
module fixture pays for it only if it runs first.
"""

# node-id prefix: why it is left out of the fast tier
SLOW: dict[str, str] = {
    "tests/test_chunks.py::test_the_chunks_lengths_change_nothing":
        "two runs of 350 iterations, one a chunk (32 s); the chunk-boundary test stays",
    # doctests that run an inference
    "probde/inference/infer.py::probde.inference.infer.infer": "NUTS on an ODE model (24 s)",
    "probde/inference/svi.py::probde.inference.svi.SVI": "an SVI fit (7 s)",
    "probde/inference/latent_path.py::probde.inference.latent_path.LatentPath":
        "NUTS on a latent path (13 s)",
    "tests/test_xla_option.py::test_the_users_xla_flags_stand": "a fresh process (5 s)",
    "tests/test_xla_option.py::test_too_late_after_the_backend_started": "a fresh process (5 s)",
    "tests/test_restart.py::test_a_screen_that_falls_back_to_sequential_chains_warns_once":
        "compiles NUTS with an implicit solver twice, sequential chains (80 s)",
    "tests/test_latent_path.py::test_counts_several_experiments_and_a_non_gaussian_initial_state":
        "NUTS and SVI fits (8 s and 15 s)",
    "tests/test_latent_path.py::test_discretisation_error_shrinks_at_the_schemes_order[solver1-2.0]":
        "the Heun case of the order test (9 s)",
    "probde/checks/calibration.py::probde.checks.calibration.sbc": "20 NUTS fits (45 s)",
    "probde/discrepancy/deep_emulator.py::probde.discrepancy.deep_emulator.DeepGPEmulator":
        "fits a deep-GP emulator by SVI (18 s)",
    # README and docs pages: whole tutorials with their inference runs (10-90 s a page)
    "tests/test_docs.py::test_page_runs": "every page, about 10 minutes in all",
    "tests/test_docs.py::test_fresh_process_page_gets_its_devices_only_if_it_asks_before_jax_starts":
        "a fresh Python process",
    # fresh processes that import JAX and compile
    "tests/test_float32.py": "a float32 run in a fresh process (44 s)",
    "tests/test_discrepancy.py::test_float64_switched_on_after_import_gives_float64_log_marginals":
        "a fresh process (6 s)",
    "tests/test_layering.py::test_probde_works_when_arviz_was_imported_first":
        "a fresh process (6 s)",
    "tests/test_layering.py::test_import_probde_loads_no_plotting_package":
        "a fresh process (5 s)",
    "tests/test_compile_cache.py::test_import_turns_the_cache_on_in_probdes_folder":
        "a fresh process (6 s)",
    "tests/test_compile_cache.py::test_cache_opt_out_and_folder_from_the_environment":
        "two fresh processes (12 s)",
    "tests/test_compile_cache.py::test_a_cache_folder_the_user_set_stands": "a fresh process (7 s)",
    "tests/test_compile_cache.py::test_a_second_process_loads_the_sampler_from_the_cache":
        "four fresh processes that run NUTS (60 s)",
    "tests/test_compile_cache.py::test_probde_keeps_every_program_unless_the_user_chose":
        "two fresh processes (12 s)",
    "tests/test_population_plots.py":
        "plots of a population fit: a NUTS fit and predictions on a grid (14 s of fixtures)",
    "tests/test_petab.py::test_steady_state_measurement":
        "pre-equilibration to a steady state, compiled for one problem (10 s)",
    "tests/test_no_callbacks.py::test_every_chain_method_counts_the_same":
        "six NUTS runs (23 s)",
    "tests/test_no_callbacks.py::test_svi_counts_the_rejections_of_every_particle":
        "two SVI fits (21 s)",
    "tests/test_no_callbacks.py::test_counting_nuts_draws_numpyros_chains":
        "two NUTS runs (7 s)",
    "tests/test_compile_cache.py::test_infer_without_failure_count_gives_the_same_draws":
        "two NUTS runs",
    # simulation-based calibration: the exact case and the likelihood bug stay
    "tests/test_sbc.py::test_a_prior_that_differs_from_the_simulators_is_flagged":
        "100 NUTS fits (40 s)",
    "tests/test_sbc.py::test_a_loop_of_fits_for_other_methods": "two Laplace fits (55 s)",
    "tests/test_particle.py::test_particle_filter_is_unbiased_on_the_benes_sde":
        "48 particle filters of 2,000 particles on a nonlinear SDE (40 s)",
    # a Gaussian filter against a particle filter: the estimator and the linear SDE stay
    "tests/test_filter_check.py::test_the_check_runs_on_a_fit": "a NUTS fit and the check (60 s)",
    "tests/test_filter_check.py::test_a_double_well_observed_sparsely_fails_with_a_warning":
        "an EKF and a particle filter on a nonlinear SDE at 40 draws (45 s)",
    "probde/checks/filter_adequacy.py::probde.checks.filter_adequacy.check_filter":
        "both filters at 20 draws (20 s)",
    "probde/checks/leave_future_out.py::probde.checks.leave_future_out.lfo":
        "two Laplace fits (35 s)",
    # identifiability: the flat direction, the closed form and the decay model stay
    "probde/checks/identifiability.py::probde.checks.identifiability.identifiability":
        "a profile sweep compiled around an ODE (15 s)",
    "tests/test_identifiability.py::test_coordinates_log_likelihood_is_probde_log_likelihood":
        "the simple machine with and without a GP (25 s)",
    "tests/test_identifiability.py::test_simple_machine_theta_profile_widens_with_the_discrepancy":
        "profiles of the simple machine (30 s)",
    # solves and sensitivities: one forward-sensitivity case stays (CASES)
    "tests/test_solve.py::test_forward_sensitivity_gradient_equals_reverse_and_finite_differences":
        "10 s",
    "tests/test_solve.py::test_stiff_forward_sensitivity_gradient_equals_reverse": "19 s",
    "tests/test_solve.py::test_simulate_paths_is_the_tuple_form_of_simulate":
        "5 s; simulate's trajectory test stays",
    "tests/test_sensitivity.py::test_error_control_on_sensitivities_makes_them_accurate": "12 s",
    "tests/test_sensitivity.py::test_forward_sensitivity_gradient_under_vmap_equals_one_at_a_time":
        "9 s",
    "tests/test_sensitivity.py::test_second_derivatives_through_forward_sensitivities": "9 s",
    "tests/test_likelihood.py::test_several_experiments_add_up": "12 s",
    "tests/test_likelihood.py::test_derived_draws_are_the_function_of_each_draw": "a NUTS run",
    "tests/test_population.py::test_new_regimen_for_an_observed_experiment":
        "a NUTS run (20 s); the labelling and new-experiment run stays",
    # Markov GP against dense: the log marginal, LOO and smoother algebra stay (CASES)
    "tests/test_markov.py::test_posterior_draws_match_dense_conditional": "6 s",
    "tests/test_markov.py::test_gradients_match_dense": "6 s each",
    # GP discrepancies: posterior checks with NUTS
    "tests/test_discrepancy.py::test_linear_simulator_posterior_is_the_exact_gaussian": "27 s",
    "tests/test_discrepancy.py::test_hyperparameter_posterior_matches_quadrature": "28 s",
    "tests/test_discrepancy.py::test_constrained_prediction_is_exact_at_the_constraint": "32 s",
    "tests/test_discrepancy.py::test_latent_discrepancy_with_count_data": "42 s",
    "tests/test_discrepancy.py::test_markov_discrepancy_in_a_model_equals_the_dense_one": "10 s",
    "tests/test_discrepancy.py::test_a_parameter_named_delta_coexists_with_a_discrepancy": "7 s",
    "tests/test_emulator.py::test_held_out_coverage_near_nominal": "fits 200 emulators",
    "tests/test_emulator.py::test_full_kennedy_ohagan_log_density_is_differentiable": "6 s",
    # NUTS runs other than the exact-Gaussian one, whose result the DataTree tests share
    "tests/test_inference.py::test_same_seed_same_draws": "44 s",
    "tests/test_inference.py::test_laplace_and_map_starts_with_an_implicit_solver":
        "54 s: mode searches and NUTS through an implicit solver",
    "tests/test_sbc.py::test_lanes_run_one_after_another_or_vmapped_give_the_same_fits":
        "20 s: the SBC fits twice",
    "tests/test_population.py::test_per_experiment_parameters_are_labelled_by_experiment_in_the_results":
        "19 s: a NUTS fit for the labels",
    "tests/test_sensitivity.py::test_hessian_through_a_reverse_adjoint_falls_back_to_differences_of_the_gradient":
        "15 s",
    "tests/test_svi.py::test_map_starts_keep_the_best_of_several_mode_searches": "13 s",
    "tests/test_convergence.py::test_a_converged_run_is_quiet": "9 s: a NUTS fit",
    "tests/test_inference.py::test_run_with_many_max_steps_failures_finishes_and_counts_them":
        "21 s",
    "tests/test_inference.py::test_several_experiments_with_missing_values": "30 s",
    "tests/test_inference.py::test_user_written_numpyro_model_runs_through_infer": "17 s",
    "tests/test_inference.py::test_no_feasible_starting_point_is_a_clear_error": "7 s",
    # SVI fits other than the exact-Gaussian ones
    "tests/test_svi.py::test_default_svi_matches_exact_gaussian_optimum":
        "four fits from the Laplace start (33 s for the first)",
    "tests/test_svi.py::test_default_full_rank_is_exact_in_correlation": "shares those fits",
    "tests/test_svi.py::test_prior_start_ends_too_wide_and_warns_where_the_default_is_exact":
        "shares those fits",
    "tests/test_svi.py::test_other_guides_run_and_find_the_means": "14 s",
    "tests/test_svi.py::test_flat_hessian_falls_back_to_the_prior_start": "8 s",
    "tests/test_svi.py::test_reproducible_with_seed": "6 s",
    "tests/test_svi.py::test_short_fit_warns": "9 s for the first case",
    "tests/test_svi.py::test_fit_stuck_where_every_step_fails_returns_its_best_window":
        "a second Laplace fit of the rise rule (6 s)",
    "tests/test_svi.py::test_non_finite_steps_are_skipped_and_counted": "6 s for the first case",
    "tests/test_svi.py::test_model_datatree_and_arviz": "24 s",
    "tests/test_svi.py::test_custom_optax_optimizer_and_hashable": "4 s",
    "tests/test_svi.py::test_several_starts_find_the_major_mode": "19 s",
    "tests/test_svi.py::test_plot_loss": "9 s",
    "tests/test_svi.py::test_map_initialised_nuts_starts_near_the_mode_and_samples_correctly":
        "9 s",
    # random-walk Metropolis: the conjugate-normal posterior stays
    "tests/test_rwm.py::test_correlated_gaussian_and_adapted_covariance": "5 s",
    "tests/test_rwm.py::test_pseudo_marginal_noisy_likelihood_gives_exact_posterior": "5 s each",
    "tests/test_rwm.py::test_chain_methods_give_the_same_draws": "8 s",
    "tests/test_rwm.py::test_same_seed_same_draws": "4 s",
    # SDEs: inference runs and repeated cases; the filters' exact algebra stays (CASES)
    "tests/test_sde.py::test_infer_sde_groups_and_dims": "NUTS with states (36 s)",
    "tests/test_sde.py::test_infer_records_exact_states_and_loo_terms_per_draw":
        "shares that run",
    "tests/test_sde.py::test_gradient_matches_finite_differences_and_dense_gradient":
        "10 s for the first case; the jit-compiled gradient test stays",
    "tests/test_sde.py::test_long_series_is_stable_and_exact": "4-6 s each",
    "tests/test_parallel_kalman.py::test_parallel_filter_and_smoother_are_the_sequential_ones[2000]":
        "2000 steps, both filters and smoothers compiled (32 s); the 7-step case stays",
    "tests/test_parallel_kalman.py::test_parallel_gradient_is_the_sequential_one[2000]":
        "shares the 2000-step compilation above",
    "tests/test_sde.py::test_matern32_model_log_likelihood_is_the_dense_gp":
        "5 s; the OU model's test stays",
    "tests/test_sde.py::test_particle_filter_through_model_log_likelihood":
        "6 s; the particle filter's unbiasedness test stays",
    "tests/test_particle.py::test_particle_filter_on_linear_sde_matches_kalman_at_default_settings":
        "24 s",
    "tests/test_particle.py::test_linear_sde_transitions_are_exact_whatever_num_steps": "9 s",
    "tests/test_particle.py::test_default_steps_follow_the_drift_time_scale_and_the_gaps": "7 s",
    "tests/test_particle.py::test_common_random_numbers_keep_the_estimate_unbiased_and_correlate_it":
        "10 s; the one-state correlation test stays",
    "tests/test_particle.py::test_check_noise_measures_the_spread_and_suggests_particles":
        "10 s: 90 filter runs",
    "tests/test_particle.py::test_discretisation_check_warns_when_the_step_is_too_coarse":
        "14 s",
    # deep GPs: fits by SVI and NUTS
    "tests/test_deepgp.py::test_random_features_converge_to_the_kernel_at_rate_one_over_sqrt_features":
        "a Monte Carlo rate, 6-10 s each",
    "tests/test_deepgp.py::test_random_feature_gp_by_svi_reduces_held_out_error": "77 s",
    "tests/test_deepgp.py::test_prediction_at_data_times_is_the_fitted_function":
        "shares that SVI fit of a deep GP (50 s)",
    "tests/test_deepgp.py::test_output_input_and_poisson_noise_with_nuts": "39 s",
    "tests/test_deepgp.py::test_minibatch_log_density_and_gradient_are_unbiased": "50 s",
    "tests/test_deepgp.py::test_minibatch_svi_fit": "35 s",
    # the deep-GP emulator these share is an SVI fit (20 s)
    "tests/test_deep_emulator.py::test_emulates_a_smooth_simulator_on_held_out_runs": "22 s",
    "tests/test_deep_emulator.py::test_fit_record_and_summary": "shares the fit",
    "tests/test_deep_emulator.py::test_predict_is_pure_jax_in_theta": "shares the fit",
    "tests/test_deep_emulator.py::test_modular_calibration_recovers_k": "NUTS, 22 s",
    "tests/test_deep_emulator.py::test_bad_input": "shares the fit",
    "tests/test_deep_emulator.py::test_short_fit_warns_at_the_caller":
        "compiles a second deep-GP fit (20 s)",
    "tests/test_model_parts.py::test_ornstein_uhlenbeck_mean_called_mu": "7 s",
    # PEtab: benchmark problems, gradients through solves, NUTS (the suite cases: CASES)
    "tests/test_petab.py::test_benchmark_log_likelihood_at_nominal_matches_the_reference":
        "8 problems, 3-30 s each",
    "tests/test_petab.py::test_crauste_log_likelihood_is_converged_in_the_solver_tolerance":
        "two tight solves (25 s)",
    "tests/test_petab.py::test_gradient_is_finite_where_a_linear_observable_is_exactly_zero":
        "Boehm's gradient (15 s)",
    "tests/test_petab.py::test_nuts_samples_a_petab_model_under_its_ids": "a NUTS run (20 s)",
}

# node-id prefix: why `make test` (CI) leaves it out; `make test-all` runs it. The seconds
# are those of a whole-suite run on the 2-core development machine (December 2026, a slow
# day), each with the shorter test of the same code that stays in `make test`.
LONG: dict[str, str] = {
    # docs pages whose tutorial fits repeat a case study or a test
    "tests/test_docs.py::test_page_runs[docs/guide/checking.md]":
        "the README's 4 x 2,000 lynx-hare NUTS run, an SBC of 30 fits and PSIS-LFO refits "
        "(550 s); test_sbc, test_lfo and test_convergence check each, the README page runs "
        "the same fit",
    "tests/test_docs.py::test_page_runs[docs/tutorials/theophylline.md]":
        "a population NUTS fit and regimen predictions (200 s); the case study runs the same "
        "model (test_case_studies)",
    "tests/test_docs.py::test_page_runs[docs/guide/models.md]":
        "an SVI fit of 20,000 steps and NUTS fits (140 s); test_svi, test_inference",
    "tests/test_docs.py::test_page_runs[docs/guide/vi.md]":
        "SVI, Laplace and MAP-start fits of the lynx-hare model (135 s); test_svi",
    "tests/test_docs.py::test_page_runs[docs/guide/populations.md]":
        "a population NUTS fit (105 s); test_population and the theophylline case study",
    "tests/test_docs.py::test_page_runs[docs/guide/discrepancy.md]":
        "a GP-discrepancy NUTS fit (100 s); test_discrepancy",
    "tests/test_docs.py::test_page_runs[docs/tutorials/logistic_growth.md]":
        "a shorter run of the case study's fits (80 s); test_discrepancy",
    "tests/test_docs.py::test_page_runs[docs/tutorials/boarding_school_flu.md]":
        "a shorter run of the case study's fit (70 s); the case study stays",
    "tests/test_docs.py::test_page_runs[docs/guide/sde.md]":
        "EKF NUTS, particle-filter and latent-path fits (210 s); test_sde, test_particle, "
        "test_latent_path and the FitzHugh-Nagumo case study",
    "tests/test_docs.py::test_page_runs[docs/guide/petab.md]":
        "imports and NUTS on PEtab problems (145 s); test_petab",
    # case studies: the lynx-hare, influenza, theophylline and FitzHugh-Nagumo runs stay
    "tests/test_case_studies.py::test_petab_boehm_reaches_the_collections_best_known_optimum":
        "31 local optimisations and NUTS through a stiff solve (440 s); test_petab checks "
        "Boehm's likelihood against the collection's",
    "tests/test_case_studies.py::test_logistic_growth_discrepancy_improves_held_out_predictions":
        "NUTS fits with and without a GP discrepancy (150 s); test_discrepancy checks the "
        "GP discrepancy against exact posteriors",
    "tests/test_case_studies.py::test_simple_machine_constrained_discrepancy_recovers_the_physical_parameter":
        "GP-discrepancy fits with and without the constraint and an emulator (260 s); "
        "test_discrepancy checks the constrained GP exactly",
    # long statistical checks
    "tests/test_particle.py::test_correlated_pseudo_marginal_mcmc_matches_the_exact_posterior":
        "a long correlated pseudo-marginal run (250 s); test_rwm's pseudo-marginal test "
        "stays",
    "tests/test_lfo.py::test_lfo_on_a_longer_series":
        "seven refits (220 s); the closed-form LFO tests stay",
    "tests/test_inference.py::test_laplace_and_map_starts_with_an_implicit_solver":
        "mode searches and NUTS through an implicit solver (185 s)",
    "tests/test_sharding.py::test_sharded_chains_on_two_forced_host_devices":
        "NUTS in a fresh process with two forced devices (165 s); test_no_callbacks runs "
        "every chain method",
    "tests/test_petab.py::test_crauste_log_likelihood_is_converged_in_the_solver_tolerance":
        "two tight solves (130 s)",
    "tests/test_petab.py::test_nuts_samples_a_petab_model_under_its_ids":
        "a NUTS run (95 s); the suite cases check the likelihood",
    "tests/test_petab.py::test_gradient_equals_finite_differences[0009]":
        "an eager gradient (95 s); cases 0001 and 0019 stay",
    "tests/test_petab.py::test_benchmark_log_likelihood_at_nominal_matches_the_reference[Zheng_PNAS2012]":
        "90 s; the other benchmark problems stay",
    "tests/test_petab.py::test_benchmark_log_likelihood_at_nominal_matches_the_reference[Weber_BMC2015]":
        "65 s; the other benchmark problems stay",
    "tests/test_parallel_kalman.py::test_parallel_filter_and_smoother_are_the_sequential_ones[2000]":
        "2,000 steps (125 s); the 7-step case stays",
    "tests/test_parallel_kalman.py::test_parallel_gradient_is_the_sequential_one[2000]":
        "shares the 2,000-step compilation above",
    "tests/test_restart.py::test_a_screen_that_falls_back_to_sequential_chains_warns_once":
        "NUTS with an implicit solver compiled twice (125 s)",
    "tests/test_deepgp.py::test_two_layer_deep_gp_by_nuts_reduces_held_out_error":
        "NUTS on a two-layer deep GP (115 s); the NUTS test with Poisson noise stays",
    "tests/test_deepgp.py::test_random_feature_gp_by_svi_reduces_held_out_error":
        "an SVI fit of a deep GP (140 s); test_minibatch_svi_fit stays",
    "tests/test_deepgp.py::test_prediction_at_data_times_is_the_fitted_function":
        "shares that fit",
    "tests/test_compile_cache.py::test_a_second_process_loads_the_sampler_from_the_cache[bar]":
        "two fresh processes (65 s); the default case stays",
}

# test function: the parametrisations the fast tier keeps, by id (the text in brackets);
# () keeps the first one. Its other cases are full-tier only.
CASES: dict[str, tuple[str, ...]] = {
    # 3 chain methods, 15-33 s each (parallel and vectorized compile for several chains)
    "tests/test_chunks.py::test_the_chains_are_numpyros_draw_for_draw": ("sequential",),
    # 6 solver x tolerance cases, 9-10 s each
    "tests/test_sensitivity.py::test_forward_sensitivity_is_the_discrete_derivative_reverse_mode_computes":
        (),
    # 4 solvers, 2-4 s each
    "tests/test_sensitivity.py::test_unrolled_stepper_takes_diffrax_steps_and_interpolates_the_same":
        (),
    # 8 kernels, 2-7 s each; the first (Matern-1/2) is exact algebra like the others
    "tests/test_markov.py::test_log_marginal_matches_dense": (),
    "tests/test_markov.py::test_loo_matches_dense": (),
    "tests/test_markov.py::test_smoother_moments_match_dense_conditional": (),
    # filters against the dense Gaussian: one EKF and one UKF case of the 9 (2-4 s each)
    "tests/test_sde.py::test_filter_log_likelihood_is_the_dense_gaussian":
        ("ou-EKF-moment_ode", "matern-UKF-exact"),
    "tests/test_sde.py::test_filtered_moments_are_exact_conditionals":
        ("ou-EKF-moment_ode", "matern-UKF-exact"),
    "tests/test_sde.py::test_smoothed_moments_are_exact_conditionals":
        ("ou-EKF-moment_ode", "matern-UKF-exact"),
    "tests/test_sde.py::test_pointwise_terms_are_exact_leave_one_out_densities":
        ("ou-EKF-moment_ode", "matern-UKF-exact"),
    "tests/test_sde.py::test_ou_model_log_likelihood_is_the_dense_gaussian": (),  # 2-4 s each
    "tests/test_model_parts.py::test_natural_parameter_names_are_free": (),  # 4-7 s each
    # the PEtab suite: 20 cases, 2 s each, 16-18 s with pre-equilibration
    "tests/test_petab.py::test_suite_case": ("0001", "0007", "0008", "0013"),
    "tests/test_petab.py::test_gradient_equals_finite_differences": ("0001",),
}


def case_id(nodeid: str) -> str | None:
    """The parametrisation id of a test (`test_f[a-b]` -> `a-b`), None if it has none."""
    return nodeid[nodeid.index("[") + 1:-1] if nodeid.endswith("]") else None


def matches(nodeid: str, prefix: str) -> bool:
    """Whether `prefix` names the test `nodeid`: the file, the test function (any of its
    parametrisations, or a class and its tests), or the test itself."""
    return nodeid == prefix or nodeid.startswith((prefix + "::", prefix + "["))
