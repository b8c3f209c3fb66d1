"""Explaining many files: the batch job behind `onnxlrp explain MODEL DIR_OR_GLOB... --out OUT/`.

Resumable: every output is written atomically, and an input's relevance .npy (with top-k: its
.targets.json) is written last, so its presence means the input is done and a later run skips it.
A file that cannot be read or does not fit the model is reported and skipped; the rest go on.
"""
from __future__ import annotations

import glob
import json
import sys
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import OnnxLrpError
from .files import save_atomic
from .inputs import IMAGE_SUFFIXES, channels_last, csv_rows, load_input
from .progress import progress_bar

INPUT_SUFFIXES = IMAGE_SUFFIXES | {".npy", ".csv"}
FAILURES_FILE = "failed.txt"


@dataclass(frozen=True)
class Item:
    path: Path      # the input file
    key: str        # its outputs' name under OUT, without suffix: "cats/001" -> OUT/cats/001.heatmap.png
    row: int | None = None   # a row of a CSV file of samples


@dataclass
class Settings:
    """What explaining one batch needs besides the explainer (plain data, so it travels to Ray actors)."""
    out: Path
    shape: list                      # the explained input's shape, None for free sizes
    primary: str                     # the explained input's name
    fixed: dict = field(default_factory=dict)   # the model's other inputs (--feed), one sample each
    target: int | None = None
    top_k: int | None = None
    mode: str = "logit"
    mean: list | None = None
    std: list | None = None
    pictures: bool = True            # heatmap and overlay PNGs beside the .npy
    selection: dict = field(default_factory=dict)   # region / mask / box / direction (onnxlrp.selections)
    feature_names: list | None = None   # 1-D inputs: the names on the per-feature bar chart


@dataclass
class Summary:
    explained: int = 0
    skipped: int = 0                                    # done by an earlier run
    failed: list = field(default_factory=list)          # (input, reason)

    def line(self) -> str:
        return (f"explained {self.explained} input(s), skipped {self.skipped} already done, "
                f"{len(self.failed)} failed")


def find_inputs(specs: list[str]) -> tuple[list[Item], list[tuple[str, str]]]:
    """Files, folders (searched recursively for images and .npy files) and glob patterns ("data/**/*.png")
    as items with distinct output names; also the specs that gave nothing, with the reason."""
    found, problems = [], []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            found += [(p, p.relative_to(path)) for p in files]
            if not files:
                problems.append((spec, "the folder holds no image or .npy file"))
        elif not path.exists() and any(c in spec for c in "*?["):
            root = _glob_root(spec)
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            found += [(p, p.relative_to(root)) for p in files]
            if not files:
                problems.append((spec, "no file matches the pattern"))
        elif not path.exists():
            problems.append((spec, "no such file or folder"))
        else:
            found.append((path, Path(path.name)))
    items, seen, keys = [], set(), set()
    for path, relative in found:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        key = relative.with_suffix("").as_posix()
        if key in keys:            # photo.png beside photo.npy: keep the suffix in the name
            key = relative.as_posix()
        keys.add(key)
        if path.suffix.lower() == ".csv":   # one item per row: <name>.row<k>
            try:
                _, rows = csv_rows(path)
            except OnnxLrpError as exc:
                problems.append((str(path), str(exc)))
                continue
            items += [Item(path, f"{key}.row{k}", row=k) for k in range(len(rows))]
        else:
            items.append(Item(path, key))
    return items, problems


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    plain = [p for p in parts[:next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))]]
    return Path(*plain) if plain else Path(".")


def done_marker(item: Item, settings: Settings) -> Path:
    """The file written last for an input."""
    suffix = ".targets.json" if settings.top_k else ".relevance.npy"
    return settings.out / (item.key + suffix)


@dataclass(frozen=True)
class Outcome:
    item: Item
    error: str | None = None     # why the input failed; None if it was explained
    note: str = ""               # what was explained: "class 3, relevance sum 0.52"


def explain_items(explainer, items: list[Item], settings: Settings, writer: Executor | None = None) -> list[Future]:
    """Load, explain and write a batch: one future outcome per item. The writes go to `writer` (threads
    encoding PNGs while the next batch is explained) or are done before returning. A batch that fails as
    a whole is retried one input at a time to find the culprit."""
    results, loaded = [], []
    for item in items:
        try:
            loaded.append((item, load_input(item.path, settings.shape, mean=settings.mean, std=settings.std,
                                            row=item.row)))
        except OnnxLrpError as exc:
            results.append(_done(Outcome(item, str(exc))))
    if not loaded:
        return results
    batch = {settings.primary: np.stack([sample for _, sample in loaded])}
    batch.update({name: np.repeat(value, len(loaded), axis=0) for name, value in settings.fixed.items()})
    try:
        options = settings.selection or {"mode": settings.mode, "top_k": settings.top_k}
        result = explainer.explain(batch if settings.fixed else batch[settings.primary], target=settings.target,
                                   **options)
    except Exception as exc:  # onnxruntime raises its own types for inputs it cannot run
        if len(loaded) > 1:
            return results + [r for item, _ in loaded for r in explain_items(explainer, [item], settings, writer)]
        return results + [_done(Outcome(loaded[0][0], _reason(exc)))]
    for i, (item, sample) in enumerate(loaded):
        if writer is None:
            results.append(_done(_write(result, i, item, settings, sample)))
        else:
            results.append(writer.submit(_write, result, i, item, settings, sample))
    return results


def _done(outcome: Outcome) -> Future:
    future = Future()
    future.set_result(outcome)
    return future


def _write(result, i: int, item: Item, settings: Settings, sample) -> Outcome:
    try:
        return Outcome(item, note=write_explanation(result, i, item, settings, sample))
    except OSError as exc:
        return Outcome(item, f"cannot write its outputs: {exc}")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and isinstance(exc, OnnxLrpError) else f"{type(exc).__name__}: {text[-1] if text else ''}"


def write_explanation(result, i: int, item: Item, settings: Settings, sample) -> str:
    """OUT/<key>.heatmap.png, .overlay.png (images), .relevance.<other input>.npy, then .relevance.npy last;
    with several targets (top-k) one set per class, <key>.class<c>.*, a grid <key>.targets.png of the
    overlays, and <key>.targets.json last. Returns what was explained, in words."""
    from .heatmap import save_array, save_heatmap
    from .pictures import feature_bars, grid, overlay, save_image

    out, primary = settings.out, settings.primary
    channel_axis = -1 if channels_last(settings.shape) else 0
    several = result.target is not None and result.target.ndim == 2
    targets = [int(t) for t in result.target[i]] if several else [
        int(result.target[i]) if result.target is not None else None]
    tiles, written = [], []
    for j, target in enumerate(targets):
        stem = f"{item.key}.class{target}" if several else item.key
        relevance = result.relevances[primary][i, j] if several else result.relevances[primary][i]
        if settings.pictures:
            save_heatmap(relevance, out / f"{stem}.heatmap.png", channel_axis=channel_axis)
        if settings.pictures and np.ndim(sample) == 3:
            tiles.append(overlay(relevance, sample, channel_axis))
            save_image(tiles[-1], out / f"{stem}.overlay.png")
        if settings.pictures and np.ndim(relevance) == 1:
            names = settings.feature_names or (csv_rows(item.path)[0] if item.path.suffix.lower() == ".csv" else None)
            save_image(feature_bars(relevance, names, sample), out / f"{stem}.features.png")
        for name, other in result.relevances.items():
            if name != primary:
                save_array(other[i, j] if several else other[i], out / f"{stem}.relevance.{_safe(name)}.npy")
        written.append(save_array(relevance, out / f"{stem}.relevance.npy").name)
    if several:
        if tiles:
            save_image(grid([tiles], [f"class {t}" for t in targets]), out / f"{item.key}.targets.png")
        record = {"input": str(item.path), "classes": targets, "relevance": written}
        save_atomic(out / f"{item.key}.targets.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
        return "classes " + ", ".join(str(t) for t in targets)
    total = float(result.relevances[primary][i].sum())
    return (f"class {targets[0]}, " if targets[0] is not None else "") + f"relevance sum {total:.6g}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class Job:
    """Explain `items` in batches, skipping those done by an earlier run; `summary` is kept up to date, so
    it is right even when the job is interrupted."""

    def __init__(self, items: list[Item], settings: Settings, batch_size: int = 16, overwrite: bool = False,
                 show_progress: bool = True, verbose: bool = False):
        self.settings, self.batch_size, self.show_progress, self.verbose = settings, batch_size, show_progress, verbose
        self.summary = Summary()
        self.pending = [item for item in items if overwrite or not done_marker(item, settings).exists()]
        self.summary.skipped = len(items) - len(self.pending)

    def batches(self):
        for start in range(0, len(self.pending), self.batch_size):
            yield self.pending[start:start + self.batch_size]

    def record(self, outcomes: list[Outcome], bar) -> None:
        for outcome in outcomes:
            path = outcome.item.path
            if outcome.error is None:
                self.summary.explained += 1
                if self.verbose:   # through the bar, so that the line does not run into it
                    bar.write(f"{path}: {outcome.note} -> {self.settings.out / outcome.item.key}.*", file=sys.stdout)
            else:
                self.summary.failed.append((str(path), outcome.error))
                bar.write(f"error: {path}: {outcome.error}", file=sys.stderr)
            bar.update(1)

    def run(self, explainer, writers: int = 4) -> Summary:
        """Explain batch after batch while `writers` threads write the previous batch's files; at most two
        batches are in memory."""
        with ThreadPoolExecutor(writers) as pool, progress_bar(len(self.pending), "explaining",
                                                                self.show_progress) as bar:
            in_flight = []
            for batch in self.batches():
                futures = explain_items(explainer, batch, self.settings, pool)
                self.record([future.result() for future in in_flight], bar)
                in_flight = futures
            self.record([future.result() for future in in_flight], bar)
        return self.summary

    def write_failures(self) -> Path | None:
        """OUT/failed.txt lists this run's failures (input, tab, reason); removed when there are none."""
        path = self.settings.out / FAILURES_FILE
        if not self.summary.failed:
            path.unlink(missing_ok=True)
            return None
        text = "".join(f"{name}\t{reason}\n" for name, reason in self.summary.failed)
        return save_atomic(path, lambda tmp: Path(tmp).write_text(text))
