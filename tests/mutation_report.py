"""Kill rate per module of the last ``mutmut run`` (``make mutation``; docs/testing.md).

Reads mutmut 3's per-file results (``mutants/<path>.meta``, ``exit_code_by_key``) and prints one
line per module: killed, survived, no tests, timeout, and the kill rate over the mutants that
tests reach (killed + timeout) / (killed + timeout + survived), and over all of them.

    python -m tests.mutation_report [--survivors MODULE]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# mutmut 3.8.1, mutmut/stats.py status_by_exit_code
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS |= {36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
STATUS |= {37: "caught by type check", None: "not checked"}


def results(root: Path = Path("mutants")) -> dict[str, dict[str, str]]:
    """``{module file: {mutant name: status}}`` for every mutated file."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        name = str(meta.relative_to(root)).removesuffix(".meta")
        out[name] = {key: STATUS.get(code, "suspicious") for key, code in codes.items()}
    return out


def summary(statuses: dict[str, str]) -> str:
    """One line: the counts and the two kill rates."""
    count = Counter(statuses.values())
    caught = count["killed"] + count["timeout"] + count["caught by type check"]
    reached = caught + count["survived"]
    total = len(statuses)
    return (
        f"{total:5d} mutants  {count['killed']:5d} killed  {count['survived']:4d} survived  "
        f"{count['no tests']:4d} no tests  {count['timeout']:3d} timeout  "
        f"{count['not checked']:3d} not checked  "
        f"kill rate {100 * caught / reached if reached else 0:5.1f}% of reached, "
        f"{100 * caught / total if total else 0:5.1f}% of all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", metavar="MODULE", help="list the survivors of a module")
    args = parser.parse_args()
    found = results()
    if not found:
        raise SystemExit("no mutmut results under mutants/: run `make mutation` first")
    for name, statuses in found.items():
        print(f"{name:38s} {summary(statuses)}")
        if args.survivors and args.survivors in name:
            for key, status in sorted(statuses.items()):
                if status == "survived":
                    print(f"    {key}")
    everything = {f"{n}:{k}": s for n, st in found.items() for k, s in st.items()}
    print(f"{'all':38s} {summary(everything)}")


if __name__ == "__main__":
    main()
