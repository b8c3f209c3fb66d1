"""What to install for an optional feature. onnxlrp is installed from its source folder, so "pip install
'onnxlrp[serve]'" would ask a package index for a project it does not have: the remedy names the extra's
own requirements, read from the installed package's metadata."""
from __future__ import annotations

import re
from importlib import metadata

from .errors import OnnxLrpError


def requirements(extra: str) -> list[str]:
    """The requirements of one extra ("serve", "text", ...), as pip takes them."""
    try:
        declared = metadata.requires("onnxlrp") or []
    except metadata.PackageNotFoundError:   # run from a source tree that was never installed
        declared = []
    marker = re.compile(r";\s*extra\s*==\s*['\"]" + re.escape(extra) + r"['\"]\s*$")
    return [marker.sub("", r).strip() for r in declared if marker.search(r)]


def install_hint(extra: str) -> str:
    found = requirements(extra)
    packages = " ".join(f"'{r}'" for r in found)
    command = f"pip install {packages}" if found else "pip install the packages it names"
    return f"{command} (the [{extra}] extra: pip install '.[{extra}]' in onnxlrp's source folder)"


def missing(extra: str, feature: str, exc: ImportError) -> OnnxLrpError:
    """The error for a feature whose extra is not installed."""
    name = f" ({exc.name} is missing)" if getattr(exc, "name", None) else ""
    return OnnxLrpError(f"{feature} needs the [{extra}] extra{name}: {install_hint(extra)}")
