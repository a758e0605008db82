"""``--inter-op auto``: time each parallel region both ways on this machine, keep what is faster.

A region's groups run side by side on ``threads // groups`` threads each, or one after another
on all the threads; which is faster depends on how evenly the region's work splits and how
well its kernels scale across threads, so it is measured, not guessed: each region alone
(its inputs from one real run, alternating rounds), then the whole model with the regions
kept against ``main`` alone. A region is kept when it is at least ``MARGIN`` faster side by
side; the stage plan is kept when the whole model is too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

MARGIN = 0.03  # the least gain a measurement must show to count (noise between rounds is about this)


@dataclass
class RegionTiming:
    """One region's measurement: p50 of its groups one after another and side by side."""

    region: int
    functions: list[str]
    mflops: list[float]
    after_ms: float
    side_by_side_ms: float
    kept: bool


@dataclass
class InterOpChoice:
    """What ``--inter-op auto`` measured and kept (stored in the library's metadata)."""

    threads: int
    regions: list[RegionTiming] = field(default_factory=list)
    side_by_side: list[int] = field(default_factory=list)
    main_ms: float | None = None  # the whole model, main alone
    staged_ms: float | None = None  # the whole model, the kept regions side by side

    def to_dict(self) -> dict:
        return asdict(self)


def choose_side_by_side(path: str | Path, threads: int | None = None, rounds: int = 3, runs: int = 10) -> InterOpChoice:
    """Time the library at ``path`` (built with stage functions) here and choose its regions."""
    from compiler.runtime import BranchRunner, alternating_calls_p50_ms, load
    from targets.library_format import StagePlan

    model = load(path, threads=threads, inter_op=False)
    plan = StagePlan.from_dict(model.metadata.extra["inter_op"]["plan"])
    choice = InterOpChoice(model.threads)
    if model.threads < plan.groups:
        return choice
    runner = BranchRunner(model._vm, model._executable, model.device, plan, model.threads,
                          set(range(len(plan.regions))))
    try:
        tensors = model._to_device(model._ordered_arrays(model.random_inputs(seed=0)))
        values = runner.values(tensors)
        for stage in plan.regions:
            p50 = alternating_calls_p50_ms({
                "after": lambda stage=stage: runner.run_stage(stage, values, side_by_side=False),
                "side": lambda stage=stage: runner.run_stage(stage, values, side_by_side=True)}, rounds, runs)
            kept = p50["side"] < p50["after"] * (1 - MARGIN)
            choice.regions.append(RegionTiming(stage.region, stage.functions, [round(f / 1e6, 1) for f in stage.flops],
                                               round(p50["after"], 3), round(p50["side"], 3), kept))
        chosen = {r.region for r in choice.regions if r.kept}
        if chosen:
            runner.side_by_side = chosen
            p50 = alternating_calls_p50_ms({"main": lambda: model._call(tensors), "staged": lambda: runner(tensors)},
                                           rounds, runs)
            choice.main_ms, choice.staged_ms = round(p50["main"], 3), round(p50["staged"], 3)
            if p50["staged"] < p50["main"] * (1 - MARGIN):
                choice.side_by_side = sorted(chosen)
    finally:
        runner.close()
    return choice


def describe_inter_op(info: dict | None) -> list[str]:
    """Lines on a library's independent branches (metadata ``inter_op``), for compile and inspect."""
    if info is None:
        return ["off: the library runs main alone"]
    if info["plan"] is None:
        return [f"{info['mode']}: no independent branches found; the library runs main alone"]
    regions = [s for s in info["plan"]["stages"] if s["region"] is not None]
    lines = [f"{info['mode']}: {len(regions)} regions of independent branches, "
             f"{len(info['side_by_side'])} run side by side"]
    measured = info.get("measured")
    for r in (measured or {}).get("regions", []):
        lines.append(f"  region {r['region']}: {len(r['functions'])} groups of {'/'.join(map(str, r['mflops']))} "
                     f"MFLOP: one after another {r['after_ms']:.3f} ms, side by side {r['side_by_side_ms']:.3f} ms"
                     f"{' (kept)' if r['kept'] else ''}")
    if measured and measured.get("main_ms") is not None:
        lines.append(f"  whole model on {measured['threads']} threads: main {measured['main_ms']:.2f} ms, "
                     f"with the kept regions {measured['staged_ms']:.2f} ms"
                     f"{'' if measured['side_by_side'] else ' (not faster: main alone)'}")
    elif measured:
        lines.append(f"  on {measured['threads']} threads no region was at least {MARGIN:.0%} faster side by side")
    return lines
