"""Every sampler/scheduler pair KSampler accepts, against ComfyUI's noise schedule computed from its formulas.

Prints one row per pair (296): the route KSampler takes (a diffusers scheduler or the sigma loop), the largest
relative difference of a step's noise level from ComfyUI's over 4, 7, 10 and 25 steps (the sigma loop also at
denoise 0.6), the bound workflows/COMPATIBILITY.md documents for pairs that differ on purpose, and the step counts
at which ComfyUI runs a different number of steps. The comparisons are the tests' own:
tests/nodes/sd/test_sigma_reference.py (diffusers pairs) and tests/nodes/sd/test_sigma_reference_loop.py (sigma
loop, here on SD1's training schedule, which the test checks is the tiny checkpoint's).

    python bench/sigma_reference.py            # the table, then a summary (recorded in bench/sigma_reference.txt)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latentgraph.nodes.sd.sigmas import DiscreteSampling  # noqa: E402

from tests.nodes.sd import test_sigma_reference as diffusers_ref  # noqa: E402
from tests.nodes.sd import test_sigma_reference_loop as loop_ref  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    sd1 = DiscreteSampling.from_betas(torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2)
    print(f"{'sampler':31} {'scheduler':16} {'route':8} {'max rel diff':>12} {'documented':>10}  other step counts")
    exact = differing = 0
    for sampler, scheduler in diffusers_ref.PAIRS:
        worst, _, other = diffusers_ref.compare(sampler, scheduler)
        bound = diffusers_ref.DOCUMENTED.get((sampler, scheduler))
        exact += bound is None
        differing += bound is not None
        print(f"{sampler:31} {scheduler:16} {'diffusers':8} {worst:12.2e} {bound if bound else '-':>10}  "
              f"{other or ''}".rstrip())
    for sampler, scheduler in loop_ref.LOOP_PAIRS:
        worst, other_loop = loop_ref.max_difference(sd1, sampler, scheduler)
        exact += 1
        print(f"{sampler:31} {scheduler:16} {'loop':8} {worst:12.2e} {'-':>10}  {other_loop or ''}".rstrip())
    total = len(diffusers_ref.PAIRS) + len(loop_ref.LOOP_PAIRS)
    print(f"\n{total} pairs: {exact} equal to ComfyUI's to float32 precision, {differing} differ as documented "
          f"(all on diffusers schedulers)")


if __name__ == "__main__":
    main()
