"""Boarding-school influenza, 1978: SIR with negative binomial counts.

Reproduces the model of Grinsztajn, Semenova, Margossian & Riou (2021), "Bayesian workflow
for disease transmission modeling in Stan".

    python case_studies/boarding_school_flu/run.py --out results/flu [--quick]
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
    data = probde.datasets.boarding_school_influenza()
    result = probde.infer(build_model(), data, method, seed=args.seed)
    write_outputs(result, args.out)


if __name__ == "__main__":
    main()
