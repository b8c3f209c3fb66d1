"""Two versions of onnxlrp side by side in one run: a benchmark command run alternately from an older
commit's tree and from this one, round after round, every markdown table row it prints collected, and the
median of each figure over the rounds compared (new / old).

    python tools/bench_versions.py --old main~3 -- python tools/bench.py --models resnet50 --batches 1
    python tools/bench_versions.py --old 1a2b3c --rounds 3 -- python tools/bench_transformers.py --models bert

The command runs in each tree's root (its tools/ import that tree's onnxlrp); the older tree is a git
worktree made for the run and removed after it. Zennit is hidden from both sides (a stand-in package that
fails to import) unless --with-zennit, and so is any package named by --hide: the comparison is between onnxlrp versions, and Zennit's own timings
would only lengthen the run. The rounds alternate which side goes first.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


KEY_COLUMNS = ("batch", "tokens", "seq", "pixels")   # numeric columns that name a row rather than measure it
NO_FIGURE = ("-", "–", "OOM", "failed")   # a cell with no figure (one side may have one): not a row's name


def tables(text: str) -> dict[tuple, dict[str, float]]:
    """Rows of every markdown table in `text`: (the heading above it, the row's non-numeric cells and its
    batch) -> {column: number}."""
    rows, header, heading = {}, None, ""
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip().split(" (")[0]
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        key = (heading,) + tuple(f"{h} {c}" if h in KEY_COLUMNS else c for c, h in zip(cells, header)
                                 if c and (h in KEY_COLUMNS or not (NUMBER.match(c) or c in NO_FIGURE)))
        values = {h: float(c) for c, h in zip(cells, header) if NUMBER.match(c) and h not in KEY_COLUMNS}
        rows[key] = values
    return rows


def run(tree: Path, command: list[str], env: dict) -> str:
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command} failed in {tree}:\n{result.stderr[-2000:]}")
    return result.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the older commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--with-zennit", action="store_true")
    parser.add_argument("--keep", help="a folder to write each run's output in")
    parser.add_argument("--hide", nargs="*", default=[], help="more packages to hide from both sides (lxt: "
                        "bench_transformers.py then times onnxlrp and onnxruntime only)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the benchmark command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.keep:   # made before the first run, not found missing after it
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxlrp-versions-") as scratch:
        old_tree = Path(scratch) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), args.old], check=True,
                       capture_output=True)
        env = dict(os.environ)
        hidden = ([] if args.with_zennit else ["zennit"]) + args.hide
        for package in hidden:
            stand_in = Path(scratch) / "hidden" / package
            stand_in.mkdir(parents=True)
            (stand_in / "__init__.py").write_text("raise ImportError('hidden by bench_versions')\n")
        if hidden:
            env["PYTHONPATH"] = str(Path(scratch) / "hidden") + os.pathsep + env.get("PYTHONPATH", "")
        try:
            collected = {"old": [], "new": []}
            for round_ in range(args.rounds):
                order = [("old", old_tree), ("new", ROOT)] if round_ % 2 == 0 else [("new", ROOT), ("old", old_tree)]
                for side, tree in order:
                    output = run(tree, command, env)
                    if args.keep:
                        (Path(args.keep) / f"round{round_ + 1}_{side}.txt").write_text(output)
                    collected[side].append(tables(output))
                    print(f"round {round_ + 1} {side} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
    print(f"{' '.join(command)}; old {args.old}, new {ROOT.name} working tree; median over {args.rounds} rounds "
          "(each side run once per round, alternating which goes first)\n")
    print("| row | figure | old | new | new / old |\n|---|---|---|---|---|")
    for key in collected["new"][0]:
        for column in collected["new"][0][key]:
            old = [t[key][column] for t in collected["old"] if key in t and column in t[key]]
            new = [t[key][column] for t in collected["new"] if key in t and column in t[key]]
            if not old or not new:
                continue
            a, b = statistics.median(old), statistics.median(new)
            ratio = f"{b / a:.3f}" if a else ""
            print(f"| {' / '.join(k for k in key if k)} | {column} | {a:g} | {b:g} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
