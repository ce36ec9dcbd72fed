"""Solver options: `probde.Solver` and `probde.ForwardSensitivity`."""

from __future__ import annotations

import dataclasses

import diffrax


@dataclasses.dataclass(frozen=True)
class ForwardSensitivity:
    """Differentiate a solve by forward sensitivities: one solve of states and sensitivities.

    The forward pass solves the augmented system  dy/dt = f(t, y, theta),
    dS/dt = (df/dy) S + df/d(y0, theta)  for the states y and their sensitivities S to
    the initial state and parameters, in one diffrax solve (explicit Runge–Kutta stages
    unrolled, so that the wider state costs little more per step than the plain solve).
    The sensitivities at the save times are wrapped in a `jax.custom_vjp`, so that
    reverse-mode `jax.grad`, which NUTS uses, costs one contraction with them instead of a
    backward sweep through the solver's steps. diffrax has no adjoint that does this for
    `grad` (its `ForwardMode` serves `jvp` only); that is why probde writes it. Faster than
    the reverse adjoint when the inputs are few (see `benchmarks/RESULTS.md`). Evaluated
    without differentiation, only the plain solve runs.

    **Arguments:**

    - `error_control`: `"states"` (default) controls the step size on the states only,
      so the gradient is the derivative of the same discrete solution the value comes
      from (and agrees with reverse mode through the solver to solver tolerance);
      `"all"` also controls the sensitivities' error, which takes more steps and gives
      sensitivities that are themselves accurate to the tolerances.
    - `max_inputs`: used by `Solver(adjoint="auto")` only: forward sensitivities are chosen
      when the number of scalar inputs (parameters plus initial states) is at most this.
    """

    error_control: str = "states"
    max_inputs: int = 32

    def __post_init__(self):
        if self.error_control not in ("states", "all"):
            raise ValueError(
                f"error_control must be 'states' or 'all'; got {self.error_control!r}"
            )
        if not isinstance(self.max_inputs, int) or isinstance(self.max_inputs, bool) or self.max_inputs < 0:
            raise ValueError(f"max_inputs must be a non-negative integer; got {self.max_inputs!r}")


@dataclasses.dataclass(frozen=True)
class Solver:
    """How to solve the dynamics: a diffrax solver and its options.

    **Main arguments:**

    - `solver`: any diffrax solver: `diffrax.Tsit5()` (default; non-stiff),
      `diffrax.Dopri5()`, `diffrax.Kvaerno5()` (stiff, implicit), ...
    - `rtol`, `atol`: tolerances of the adaptive step-size controller.
    - `max_steps`: at most this many steps per solve. A solve that needs more *fails*: it is
      returned with `ok=False` (never an exception) and, inside a model, the proposal is
      rejected and counted.

    **Other arguments:**

    - `adjoint`: how gradients are taken. `"auto"` (default) picks
      `ForwardSensitivity()` for an explicit solver when the inputs are few, and
      `diffrax.RecursiveCheckpointAdjoint()` otherwise, and always for an implicit (stiff)
      solver: there forward sensitivities widen the Newton system of every step to the
      states and all their sensitivities, whose factorisation grows with the cube of that
      width (10 to 100 times slower on the PEtab benchmark problems, see
      `benchmarks/RESULTS.md`); or pass either explicitly, or any diffrax adjoint.
    - `dt0`: initial step; `None` lets diffrax choose it.
    - `stepsize_controller`: a diffrax step-size controller; `None` gives
      `diffrax.PIDController(rtol=rtol, atol=atol)`.

    **Example:**

    ```python
    >>> import diffrax, probde
    >>> stiff = probde.Solver(diffrax.Kvaerno5(), rtol=1e-8, atol=1e-10, max_steps=10_000)
    >>> stiff.max_steps
    10000

    ```
    """

    solver: diffrax.AbstractSolver = dataclasses.field(default_factory=diffrax.Tsit5)
    rtol: float = 1e-6
    atol: float = 1e-6
    max_steps: int = 4096
    adjoint: object = "auto"
    dt0: float | None = None
    stepsize_controller: diffrax.AbstractStepSizeController | None = None

    def __post_init__(self):
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise TypeError(
                "solver must be a diffrax solver instance such as diffrax.Tsit5(); "
                f"got {self.solver!r} of type {type(self.solver).__name__}"
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer; got {self.max_steps!r}")
        if not (
            self.adjoint == "auto"
            or isinstance(self.adjoint, (ForwardSensitivity, diffrax.AbstractAdjoint))
        ):
            raise TypeError(
                'adjoint must be "auto", probde.ForwardSensitivity() or a diffrax adjoint; '
                f"got {self.adjoint!r} of type {type(self.adjoint).__name__}"
            )
        if self.stepsize_controller is not None and not isinstance(
            self.stepsize_controller, diffrax.AbstractStepSizeController
        ):
            raise TypeError(
                "stepsize_controller must be a diffrax step-size controller or None; "
                f"got {self.stepsize_controller!r}"
            )

    def controller(self) -> diffrax.AbstractStepSizeController:
        """The step-size controller used for this solver."""
        if self.stepsize_controller is not None:
            return self.stepsize_controller
        return diffrax.PIDController(rtol=self.rtol, atol=self.atol)

    def resolve_adjoint(self, num_inputs: int):
        """The adjoint used for a solve with `num_inputs` scalar inputs."""
        if self.adjoint == "auto":
            default = ForwardSensitivity()
            implicit = isinstance(self.solver, diffrax.AbstractImplicitSolver)
            if num_inputs <= default.max_inputs and not implicit:
                return default
            return diffrax.RecursiveCheckpointAdjoint()
        return self.adjoint
