"""How well does each gamma policy do under a machine's verification costs? A simulation.

The cost-model policy learns c and v(gamma) from the clock while it decodes, so how good its
choices are depends on the shape of v: flat (AMX), a line (AVX2 bf16), or steps (an int8
target: torch's kernel works on rows in blocks of four, docs/archive/results.md 0.2 and 0.7).
Measuring that on the real pair costs minutes per row and one repeat is noisy; this runs the
library's own policies against modeled costs instead: i.i.d. acceptance alpha, c target steps
per drafted token, v(gamma) from a table, timings jittered by +-8 %, the prefill step not
counted (as in the bench's decode speedup). Each cell is the mean decode speedup over the
target alone across `--replies` replies of `--tokens` tokens, a fresh policy per reply.

    python benchmarks/gamma_policies.py
"""

from __future__ import annotations

import argparse
import random
import statistics

from distillspec.engine.gamma import DEFAULT_GAMMA, FixedGamma, StepReport, make_gamma_policy
from distillspec.eval.environment import environment, environment_line

#: v(gamma) in target decode steps, per machine shape
VERIFY_SHAPES = {
    # int8 target on an AVX2 EPYC (results 0.7): 2-4 rows cost little more than one, 5 cost 2.5
    "int8-steps": lambda gamma: {0: 1.0, 1: 1.06, 2: 1.2, 3: 1.4}.get(gamma, 2.5 + 0.15 * (gamma - 4)),
    # bf16 target on the same CPU (results 0.6): each extra row costs most of a step
    "bf16-line": lambda gamma: 1.0 + 0.65 * gamma,
    # AMX Xeon (MODELS.md): a 9-token pass costs 1.02 steps
    "flat": lambda gamma: 1.0 + 0.005 * gamma,
}


def simulate_reply(policy, alpha: float, cost: float, verify, tokens: int, rng: random.Random,
                   jitter: float = 0.08) -> float:
    """Decode speedup of one reply: tokens after the prefill step / their modeled seconds."""
    emitted, seconds, first = 0, 0.0, True
    while emitted < tokens:
        gamma = policy.next_gamma()
        accepted = next((i for i in range(gamma) if rng.random() >= alpha), gamma)
        draft_seconds = gamma * cost * rng.uniform(1 - jitter, 1 + jitter)
        verify_seconds = verify(gamma) * rng.uniform(1 - jitter, 1 + jitter)
        policy.update(StepReport(gamma, accepted, draft_seconds, verify_seconds, prefill=first,
                                 draft_tokens_fed=gamma + 1 if gamma else 0))
        if not first:
            emitted += accepted + 1
            seconds += draft_seconds + verify_seconds
        first = False
    return emitted / seconds  # the target alone emits one token per (unit) step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alphas", default="0.9,0.85,0.5,0.2")
    parser.add_argument("--costs", default="0.2,0.38", help="c values, in target decode steps")
    parser.add_argument("--gammas", default="1,2,3,4", help="fixed gammas to compare")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--replies", type=int, default=200)
    args = parser.parse_args()
    fixed = [int(g) for g in args.gammas.split(",")]
    print(environment_line(environment()) + " (modeled costs: the CPU only runs the policies)")
    print(f"decode speedup over the target alone, mean of {args.replies} simulated replies of {args.tokens} tokens")
    print("| v shape | alpha | c | cost-model | " + " | ".join(f"gamma={g}" for g in fixed) + " |")
    print("|---" * (4 + len(fixed)) + "|")
    for shape, verify in VERIFY_SHAPES.items():
        for alpha in (float(a) for a in args.alphas.split(",")):
            for cost in (float(c) for c in args.costs.split(",")):
                policies = [lambda: make_gamma_policy(DEFAULT_GAMMA, "cost-model")]
                policies += [lambda g=g: FixedGamma(g) for g in fixed]
                cells = []
                for make in policies:
                    rng = random.Random(0)
                    cells.append(statistics.mean(simulate_reply(make(), alpha, cost, verify, args.tokens, rng)
                                                 for _ in range(args.replies)))
                print(f"| {shape} | {alpha} | {cost} | " + " | ".join(
                    f"**{x:.2f}**" if x == max(cells) else f"{x:.2f}" for x in cells) + " |")


if __name__ == "__main__":
    main()
