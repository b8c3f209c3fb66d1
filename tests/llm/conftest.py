import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent.parent / "tools"))   # appended: llm_fixtures, llm_lxt_oracle shadow nothing
