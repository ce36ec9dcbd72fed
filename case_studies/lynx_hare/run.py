"""Lynx-hare: Lotka-Volterra calibrated to Hudson's Bay Company pelts, 1900-1920.

Reproduces Carpenter's Stan case study "Predator-Prey Population Dynamics: the
Lotka-Volterra model in Stan": LogNormal noise, the 1900 pelts observing the initial state.

    python case_studies/lynx_hare/run.py --out results/lynx_hare [--quick]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _common import parse_args, setup_jax, write_outputs  # noqa: E402

NUM_CHAINS = 4


def main():
    args = parse_args(__doc__.splitlines()[0])
    setup_jax(NUM_CHAINS)
    import probde

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from model import build_model

    steps = 300 if args.quick else 1000
    method = probde.NUTS(num_chains=NUM_CHAINS, num_warmup=steps, num_samples=steps)
    result = probde.infer(build_model(), probde.datasets.lynx_hare(), method, seed=args.seed)
    write_outputs(result, args.out)


if __name__ == "__main__":
    main()
