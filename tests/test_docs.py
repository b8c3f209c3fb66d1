"""Every relative link in the README and docs/ points at a file of the repository, and so does every file
name that the docs, docstrings and comments cite."""
import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# a path into the repository with a file extension: docs/rules.md, onnxlrp/ops/weighted.py, tools/bench.py
CITED_PATH = re.compile(r"(?<![\w/.<{$-])((?:docs|onnxlrp|tools|tests|models|\.ci)/[\w./-]*\w\."
                        r"(?:md|py|onnx|json|png|npy|sh|txt|html|js|css|csv))(?![\w/])")
# a bare page name: "see performance.md"
CITED_PAGE = re.compile(r"(?<![\w/.<{-])([A-Za-z][\w-]*\.md)\b")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted(p for folder in ("onnxlrp", "tools", "tests") for p in (ROOT / folder).rglob("*.py"))


def test_every_doc_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).resolve().exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_docs_stay_inside_the_repository():
    for page in PAGES:
        assert "../shared" not in page.read_text(encoding="utf-8"), page


def _prose(path: Path) -> str:
    """What a source file says to its reader: docstrings and comments (not the strings its code uses)."""
    text = path.read_text(encoding="utf-8")
    parts = [token.string for token in tokenize.generate_tokens(io.StringIO(text).readline)
             if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


def test_every_cited_file_exists():
    pages = {p.name for p in PAGES} | {p.name for p in ROOT.glob("*.md")}
    missing = []
    for path in PAGES + SOURCES:
        text = path.read_text(encoding="utf-8") if path.suffix == ".md" else _prose(path)
        missing += [f"{path.relative_to(ROOT)} cites {m}" for m in CITED_PATH.findall(text) if not (ROOT / m).exists()]
        missing += [f"{path.relative_to(ROOT)} cites {m}" for m in CITED_PAGE.findall(text) if m not in pages]
    assert not missing, missing
