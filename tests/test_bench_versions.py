"""tools/bench_versions.py reads the tables the benchmarks print, and pairs the rows of the two sides."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_versions  # noqa: E402

# tools/bench_long.py's decoder table: rows named by their tokens, cells without a figure ("-", "OOM")
LONG = """gemma3_270m: 18 layers; AttnLRP; batch 1

| tokens | inference s | default s | low s | LXT s | inference MB | default MB | low MB | LXT MB | low / default time |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 512 | 0.35 | 0.72 | 1.05 | - | 43 | 609 | 94 | - | 1.45 |
| 4096 | 7.19 | {default_s} | 24.45 | - | 3250 | {default_mb} | 1248 | - | {ratio} |

(relevance, low against default form at 512 tokens, relative L2: 1.0e-7 with graph optimisations)
"""


def test_rows_are_named_by_their_tokens_whatever_cells_lack_a_figure():
    old = bench_versions.tables(LONG.format(default_s="19.27", default_mb="10334", ratio="1.27"))
    new = bench_versions.tables(LONG.format(default_s="OOM", default_mb="OOM", ratio=""))
    assert set(old) == set(new) == {("", "tokens 512"), ("", "tokens 4096")}
    row = ("", "tokens 4096")
    assert old[row] == {"inference s": 7.19, "default s": 19.27, "low s": 24.45, "inference MB": 3250.0,
                        "default MB": 10334.0, "low MB": 1248.0, "low / default time": 1.27}
    assert "default s" not in new[row] and new[row]["low MB"] == 1248.0


def test_a_vit_row_is_named_by_its_pixels_and_tokens():
    text = ("| pixels | tokens | inference s | low s |\n|---:|---:|---:|---:|\n| 224 | 197 | 0.09 | 0.26 |\n"
            "| 448 | 785 | 0.44 | 1.20 |\n")
    rows = bench_versions.tables(text)
    assert rows[("", "pixels 448", "tokens 785")] == {"inference s": 0.44, "low s": 1.2}
