"""Write the four benchmark plans of issue 4 for an N-layer decoder (default 24).

    python tools/bench_plans.py                                   # -> vskip_compile/plans/bench24_*.json
    python tools/bench_plans.py --num-layers 32 -o /tmp/plans

- ``empty``: every layer full (the compiled graph must be as fast as the source);
- ``vskip_like``: skip visual attention in the deepest 60% of the layers (V-Skip skips it in
  19 of LLaVA-1.5-7B's 32 layers, mostly deep ones);
- ``opskip_like``: OpSkip's released Qwen3-VL-8B preset 20 (36 layers, shipped as
  ``vskip_compile/plans/opskip_qwen3vl8b_preset20.json``) scaled to N layers: layer j takes
  the action of the 36-layer plan's layer that holds the middle of j's share of the depth,
  floor((j + 0.5) * 36 / N); for 24 layers that is skip visual attention in 1 and
  11-15 and freeze 16-23 (the last third), 14 of 24 layers as 20 of 36;
- ``freeze_after2``: layers 0-2 full, every later layer frozen.

The plans name no family, so they fit any N-layer decoder; freeze scope is ``visual``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from vskip_compile.core.plan import Action, Plan, load_plan, to_json

PLANS_DIR = Path(__file__).resolve().parent.parent / "vskip_compile" / "plans"
OPSKIP_PRESET = PLANS_DIR / "opskip_qwen3vl8b_preset20.json"


def empty(num_layers: int) -> Plan:
    return Plan.empty(num_layers)


def vskip_like(num_layers: int, share: float = 0.6) -> Plan:
    deep = round(share * num_layers)
    return Plan.from_layers(num_layers, {i: Action.SKIP_ATTENTION for i in range(num_layers - deep, num_layers)})


def scale(plan: Plan, num_layers: int) -> Plan:
    """``plan`` resampled to ``num_layers``: each new layer takes the action of the old layer
    that holds the middle of its share of the depth (old layer i spans [i, i + 1))."""
    ratio = plan.num_layers / num_layers
    source = [math.floor((j + 0.5) * ratio) for j in range(num_layers)]
    return Plan(tuple(plan.actions[i] for i in source), plan.freeze_scope)


def opskip_like(num_layers: int) -> Plan:
    return scale(load_plan(OPSKIP_PRESET)[0], num_layers)


def freeze_after(num_layers: int, last_full: int = 2) -> Plan:
    return Plan.from_layers(num_layers, {i: Action.FREEZE for i in range(last_full + 1, num_layers)})


def bench_plans(num_layers: int) -> dict[str, tuple[Plan, str]]:
    """name -> (plan, description)."""
    return {
        "empty": (empty(num_layers), "Every layer full: the compiled graph must equal the source, and be as fast."),
        "vskip_like": (vskip_like(num_layers), "V-Skip-like: skip visual attention in the deepest 60% of the layers."),
        "opskip_like": (opskip_like(num_layers),
                        f"OpSkip-like: OpSkip's Qwen3-VL-8B preset 20 scaled from 36 to {num_layers} layers "
                        f"(layer j takes the action of layer floor((j + 0.5) * 36 / {num_layers}) of 36)."),
        "freeze_after2": (freeze_after(num_layers), "Layers 0-2 full, every later layer frozen."),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-layers", type=int, default=24)
    parser.add_argument("-o", "--output", type=Path, default=PLANS_DIR, help="directory (default: the shipped plans)")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, (plan, description) in bench_plans(args.num_layers).items():
        path = args.output / f"bench{args.num_layers}_{name}.json"
        path.write_text(to_json(plan, description=description))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
