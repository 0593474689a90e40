"""``python -m bench`` (``make bench``): run the benchmarks and write bench/results/<date>.*.

Needs root and the lab's Debian packages for the lab parts (converged, ansible, models); the
start-up and planner parts run anywhere. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import report
from bench.run import PARTS, Options, run


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected host counts such as 1,2,4,8, got {text!r}")
    return values


def _rtts(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 0 or v > 1000 for v in values):
        raise argparse.ArgumentTypeError(f"expected milliseconds such as 0,20,50,100, got {text!r}")
    return values


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    return parts


def main(argv: list[str] | None = None) -> int:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=defaults.reps, help="repetitions (default 3)")
    parser.add_argument(
        "--hosts", type=_ints, default=defaults.hosts, help="fan-out host counts (1,2,4,8)"
    )
    parser.add_argument(
        "--ansible-hosts", type=_ints, default=None, help="host counts for Ansible (--hosts)"
    )
    parser.add_argument(
        "--model-hosts", type=_ints, default=None, help="host counts for models (--hosts)"
    )
    parser.add_argument("--model-mib", type=int, default=defaults.model_mib, help="model size")
    parser.add_argument("--planner-hosts", type=int, default=defaults.planner_hosts)
    parser.add_argument("--startup-reps", type=int, default=defaults.startup_reps)
    parser.add_argument(
        "--only", type=_parts, default=PARTS, help=f"parts to run ({','.join(PARTS)})"
    )
    parser.add_argument("--out", type=Path, default=defaults.out, help="report folder")
    parser.add_argument("--work", type=Path, default=defaults.work, help="logs, inventories")
    parser.add_argument(
        "--rtt",
        type=_rtts,
        default=defaults.rtts,
        help="added round-trip times in ms for the rtt part (0,20,50,100)",
    )
    parser.add_argument(
        "--lock-wait", type=float, default=0.0, help="seconds to wait for the lab lock"
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    options = Options(
        reps=args.reps,
        hosts=args.hosts,
        ansible_hosts=args.ansible_hosts,
        model_hosts=args.model_hosts,
        model_mib=args.model_mib,
        planner_hosts=args.planner_hosts,
        startup_reps=args.startup_reps,
        parts=args.only,
        out=args.out,
        work=args.work,
        lock_wait_s=args.lock_wait,
        rtts=args.rtt,
    )
    results = run(options)
    paths = report.write(results, options.out)
    print(report.render(results))
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    failed = [n for n in results.get("notes", []) if "not measured" not in n]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
