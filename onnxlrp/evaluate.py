"""`onnxlrp evaluate`: run the checks of onnxlrp.checks on a model and a batch of inputs, and write a
Markdown report (OUT/report.md) with its pictures beside it.

Each check has one section writer here; it runs the check, saves its figures into the report folder
and returns the Markdown that embeds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checks
from .files import save_atomic
from .heatmap import heatmap_image
from .pictures import grid, overlay, save_image
from .runtime import Explainer

COMPARED_COMPOSITES = ("epsilon", "zplus", "epsilon_alpha2_beta1_flat")   # beside the user's own
MAX_PICTURED = 4  # samples shown in the pictures


@dataclass
class Evaluation:
    """What every section needs: the model, the user's explainer settings and the inputs."""
    model: object
    explainer: Explainer          # the user's composite, output, threads
    x: np.ndarray                 # [N, ...] inputs
    channels_last: bool
    out: Path
    target: int | None = None
    mode: str = "logit"
    seed: int = 0
    patch_size: int = 4
    perturbation: str = "uniform"
    steps: int | None = None
    order: str = "cascading"
    max_layers: int | None = None
    injections: int = 8
    inject_at: str | None = None
    show_progress: bool = True

    @property
    def batch_channel_axis(self) -> int | None:
        return None if self.x.ndim == 2 else (-1 if self.channels_last else 1)

    @property
    def sample_channel_axis(self) -> int | None:
        return None if self.x.ndim == 2 else (-1 if self.channels_last else 0)


def run(evaluation: Evaluation, names: list[str]) -> Path:
    """Run the named checks, write OUT/report.md, return its path."""
    sections = [f"# onnxlrp evaluation\n\nmodel `{evaluation.model}`, composite `{evaluation.explainer.composite!r}`, "
                f"mode `{evaluation.mode}`, {len(evaluation.x)} input(s), seed {evaluation.seed}\n"]
    for name in names:
        sections.append(SECTIONS[name](evaluation))
    path = evaluation.out / "report.md"
    save_atomic(path, lambda tmp: Path(tmp).write_text("\n".join(sections)))
    return path


def heatmaps_section(ev: Evaluation) -> str:
    """Overlays of the user's composite and a few others, one row per input."""
    shown = ev.x[:MAX_PICTURED]
    columns = [("input", None), (_short_name(ev.explainer.composite), ev.explainer)]
    columns += [(name, ev.explainer.replace(composite=name)) for name in COMPARED_COMPOSITES]
    target = ev.explainer.explain(shown, target=ev.target).target
    rows = [[] for _ in shown]
    for title, explainer in columns:
        # the input column is an overlay without relevance: the grey input alone
        relevance = np.zeros_like(shown) if explainer is None else explainer.explain(shown, target=target).relevance
        for row, sample, r in zip(rows, shown, relevance):
            row.append(overlay(r, sample, ev.sample_channel_axis))
    save_image(grid(rows, [title for title, _ in columns], [f"class {t}" for t in target]), ev.out / "heatmaps.png")
    return ("## Heatmaps\n\nRed: relevance for the class, blue: against it, white/grey: none; each heatmap scaled "
            "to its own largest |value|.\n\n![heatmaps](heatmaps.png)\n")


def conservation_section(ev: Evaluation) -> str:
    report = checks.conservation(ev.explainer.replace(layer_sums=True), ev.x, target=ev.target, mode=ev.mode)
    text = ("## Conservation and positivity\n\nPer layer, from the output down: the sum of relevance relative to "
            "the output relevance, and the share of negative relevance.\n\n" + report.table() + "\n")
    text += _figure(report.plot(ev.out / "conservation.png"), "relative development of the relevance sum", "conservation.png")
    return text


def pixel_flipping_section(ev: Evaluation) -> str:
    result = checks.pixel_flipping(ev.explainer, ev.x, target=ev.target, mode=ev.mode, patch_size=ev.patch_size,
                                   perturbation=ev.perturbation, steps=ev.steps, channel_axis=ev.batch_channel_axis,
                                   seed=ev.seed, show_progress=ev.show_progress)
    text = (f"## Selectivity (region perturbation)\n\n{result.settings['patches']} patches of {ev.patch_size} px, "
            f"{result.settings['steps']} steps, perturbation `{ev.perturbation}`; the target's logit after each "
            f"step.\n\n" + result.table() + "\n")
    text += _figure(result.plot(ev.out / "pixel_flipping.png"), "MoRF and LeRF curves", "pixel_flipping.png")
    return text


def randomisation_section(ev: Evaluation) -> str:
    result = checks.randomisation(ev.explainer.model, ev.x, lambda model: ev.explainer.replace(model=model), target=ev.target, order=ev.order, seed=ev.seed,
                                  channel_axis=ev.sample_channel_axis, max_layers=ev.max_layers,
                                  show_progress=ev.show_progress)
    text = (f"## Model-parameter randomisation ({ev.order})\n\nSimilarity of each heatmap to the original one, "
            "mean (min..max) over inputs.\n\n" + result.table() + "\n")
    text += _figure(result.plot(ev.out / "randomisation.png"), "similarity per randomised layer", "randomisation.png")
    if ev.x.ndim > 2:
        tiles = [[heatmap_image(maps[i], None) for maps in result.heatmaps] for i in range(min(len(ev.x), MAX_PICTURED))]
        labels = [row.layers[-1] if row.layers else "original" for row in result.rows]
        save_image(grid(tiles, [label[-18:] for label in labels]), ev.out / "randomisation_heatmaps.png")
        text += "\n![heatmaps as layers are randomised](randomisation_heatmaps.png)\n"
    return text


def convergence_section(ev: Evaluation) -> str:
    """The user's composite, with epsilon and zplus beside it in the plot: the published contrast."""
    channel_axis = ev.batch_channel_axis if ev.batch_channel_axis is not None else 1
    results = {}
    for name, composite in [(_short_name(ev.explainer.composite), None), ("epsilon", "epsilon"), ("zplus", "zplus")]:
        if name in results:
            continue
        explainer = ev.explainer.replace(layer_relevances=True, composite=composite or ev.explainer.composite)
        results[name] = checks.convergence(explainer, ev.x, injections=ev.injections, seed=ev.seed,
                                           channel_axis=channel_axis, class_sensitivity=composite is None,
                                           show_progress=ev.show_progress, inject_at=ev.inject_at)
    own = next(iter(results.values()))
    text = (f"## Cosine-similarity convergence\n\n{ev.injections} random relevance vectors injected at "
            f"{'`' + ev.inject_at + '`' if ev.inject_at else 'the logits'} "
            "per input; median |cosine similarity| of the channel vectors between pairs, per layer from there "
            "down.\n\n" + own.table() + "\n")
    own_name, others = next(iter(results)), dict(list(results.items())[1:])
    text += _figure(own.plot(ev.out / "convergence.png", name=own_name, others=others),
                    "cosine-similarity convergence, with epsilon and zplus for comparison", "convergence.png")
    return text


def _figure(drawn: bool, caption: str, file: str) -> str:
    """The Markdown that embeds a plot, or a line saying why there is none (the tables are there either way)."""
    if drawn:
        return f"\n![{caption}]({file})\n"
    return (f"\n_The plot ({caption}) is missing: drawing it needs matplotlib, which is not installed here "
            "(`pip install matplotlib`)._\n")


def _short_name(composite) -> str:
    return repr(composite).split("(")[0]


def continuity_section(ev: Evaluation) -> str:
    result = checks.continuity(ev.explainer, ev.x, target=ev.target, mode=ev.mode,
                               channel_axis=ev.batch_channel_axis, seed=ev.seed)
    return ("## Continuity\n\n||R(x) - R(x')||_1 / ||x - x'||_2 for one-pixel shifts and small noise; smaller is "
            "smoother.\n\n" + result.table() + "\n")


SECTIONS = {
    "heatmaps": heatmaps_section,
    "conservation": conservation_section,
    "pixel-flipping": pixel_flipping_section,
    "randomisation": randomisation_section,
    "convergence": convergence_section,
    "continuity": continuity_section,
}
