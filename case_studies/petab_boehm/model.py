"""Boehm et al. (2014), STAT5 dimerisation, read from its PEtab files.

The problem ships with probde (`probde.datasets.petab_problem()`, from the PEtab benchmark
collection): 8 states, 9 estimated parameters (6 rate constants and 3 noise levels, all on
the log10 scale with uniform priors on [1e-5, 1e5]), 48 measurements of three observables
(phosphorylated STAT5A and STAT5B relative to total, and STAT5A relative to all STAT5).
"""

import diffrax

import probde
import probde.petab

# --8<-- [start:solver]
# Sampling needs the log density to a few digits, not to the 1e-8 of the reference checks.
# The reaction network is stiff (rate constants from 1e-5 to 1e5 within the bounds), hence
# an implicit solver: Kvaerno3 at rtol 1e-5 gives the log-likelihood at the nominal
# parameters to 2e-4 of the reference (-138.2218 against -138.2220) and its gradient in
# about 12 ms, against 33 ms for Kvaerno5 at rtol 1e-6 and 99 ms at the default rtol 1e-8.
SAMPLING_SOLVER = probde.Solver(diffrax.Kvaerno3(), rtol=1e-5, atol=1e-7, max_steps=20_000)
# --8<-- [end:solver]


def load_problem(solver=SAMPLING_SOLVER):
    """The PEtab problem, as a probde model and data."""
    return probde.petab.load(probde.datasets.petab_problem("Boehm_JProteomeRes2014"),
                             solver=solver)
