"""Issue 17's two cost targets in CPU time a request: the ruler the targets are judged by in `make bench`.

    python -m tests.benchmarks --only cpu [--quick]

Each app is served in a process of its own pinned to one CPU (`profile_requests cpu-once`: a real ASGI
call per request, the SDK app and its session manager, warmed up, then `gc.freeze()` and the measured
requests), the apps in turn, round after round; a round's ratio is `bare`'s CPU a request over the app's,
and the median of the rounds' ratios is judged. No wire: uvicorn's and the kernel's share of a request
would be the same for every app and only dilute the ratio; what it cannot see is the load generator
sharing the machine. Between rounds an app's figure moves by up to ±10 µs on a noisy host (about ±3 %),
so a ratio within that distance of its target is not yet a verdict: run it again.

The deterministic proxy of this figure is `--only bytecodes` (and `--only instructions`); they move
with a change, but a bytecode of the stacks' costs more than a bytecode of the SDK's (allocation,
dict look-ups), so they read higher than this ruler.
"""

from __future__ import annotations

import statistics
from typing import Any

from . import profile_requests
from ._common import section, table, verdict
from .bench_bytecodes import TARGETS

APPS = ("bare", *TARGETS)


def paired_ratios(found: dict[str, list[float]], app: str) -> list[float]:
    """`bare`'s CPU a request over `app`'s, round by round (the rounds ran one after the other)."""
    return [bare / other for bare, other in zip(found["bare"], found[app], strict=True)]


def main(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 5
    measured = 1000 if quick else 4000
    found = profile_requests.cpu(list(APPS), rounds=rounds, measured=measured)
    print(section(f"CPU a request, in process, pinned ({rounds} rounds of {measured} requests, apps in turn)"))
    bare = statistics.median(found["bare"])
    rows = []
    for app in APPS:
        runs = found[app]
        ratio = statistics.median(paired_ratios(found, app)) if app != "bare" else 1.0
        spread = " ".join(f"{run:.0f}" for run in runs)
        rows.append(
            [app, f"{statistics.median(runs):.1f}", f"{statistics.median(runs) - bare:+.1f}", f"{ratio:.3f}", spread]
        )
    print(table(["app", "µs a request", "over bare", "bare/app (median of rounds)", "rounds (µs)"], rows))
    targets = []
    for app, target in TARGETS.items():
        ratio = statistics.median(paired_ratios(found, app))
        print(f"  {app}: {ratio:.3f} of bare in CPU a request (≥ {target:g}: {verdict(ratio >= target)})")
        targets.append([f"{app}/bare, CPU a request in process", ratio, "of bare", f"≥ {target:g}", ratio >= target])
    return {"runs": found, "rounds": rounds, "measured": measured, "targets": targets}
