"""Explaining a large dataset on a Ray cluster (the [ray] extra).

Each actor holds one explainer session, built from the model's path (so the model travels as a path,
not as bytes through the object store), with onnxruntime threads matched to the actor's CPUs and the
CUDA provider when the actor has a GPU.

    import ray, onnxlrp.distributed as dist
    ds = ray.data.from_numpy(images).rename_columns({"data": "image"})
    explained = dist.explain_dataset(ds, "/shared/model.onnx", "epsilon_plus_flat", actors=4)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from . import extras
from .errors import OnnxLrpError


def _ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise extras.missing("ray", "running on Ray", exc) from None
    return ray


def _model_path(model) -> str:
    if not isinstance(model, (str, os.PathLike)):
        raise OnnxLrpError("give the model as a path: every actor loads it from there (a path all nodes can read)")
    path = Path(model).resolve()
    if not path.is_file():
        raise OnnxLrpError(f"model file '{model}' does not exist")
    return str(path)


def _pool(actors: int | None, cpus_per_actor: float, gpus_per_actor: float):
    """A fixed pool of `actors`, or one that grows to what the cluster's CPUs (GPUs) allow."""
    ray = _ray()
    if actors is not None:
        if actors < 1:
            raise OnnxLrpError("actors must be at least 1")
        return ray.data.ActorPoolStrategy(size=actors)
    resources = ray.cluster_resources()
    most = int(resources.get("CPU", 1) // max(cpus_per_actor, 1e-9))
    if gpus_per_actor:
        most = min(most, int(resources.get("GPU", 0) // gpus_per_actor))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, most))


def _actor_explainer(model_path: str, composite, options: dict, threads: int, gpu: bool):
    """An actor's explainer: `threads` onnxruntime threads (its CPUs), the CUDA provider if it has a GPU."""
    from .runtime import CUDA_PROVIDERS, Explainer

    return Explainer(model_path, composite=composite, providers=CUDA_PROVIDERS if gpu else None, threads=threads,
                     **options)


def _on_actors(ds, actor_class, constructor_args: tuple, batch_size: int, actors: int | None,
               cpus_per_actor: float, gpus_per_actor: float):
    """ds.map_batches over a pool of `actor_class` actors, each with its CPUs and GPUs reserved."""
    return ds.map_batches(actor_class, batch_size=batch_size, batch_format="numpy",
                          fn_constructor_args=constructor_args, compute=_pool(actors, cpus_per_actor, gpus_per_actor),
                          num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)


class ExplainerActor:
    """One explainer session per actor; called with a batch of rows (dict column -> array)."""

    def __init__(self, model_path: str, composite, mode: str, threads: int, gpu: bool, options: dict,
                 target, target_column, output_column: str):
        self.explainer = _actor_explainer(model_path, composite, options, threads, gpu)
        self.compiled = self.explainer.compiled(mode)
        self.mode, self.target, self.target_column, self.output_column = mode, target, target_column, output_column

    def __call__(self, batch: dict) -> dict:
        inputs = {name: np.stack(batch[name]) if batch[name].dtype == object else batch[name]
                  for name in self.compiled.inputs}
        target = batch[self.target_column] if self.target_column else self.target
        result = self.explainer.explain(inputs if len(inputs) > 1 else next(iter(inputs.values())),
                                        target=target, mode=self.mode)
        out = dict(batch)
        for k, (name, relevance) in enumerate(result.relevances.items()):
            out[self.output_column if k == 0 else f"{self.output_column}_{name}"] = relevance
        if result.target is not None:
            out["target_explained"] = result.target
        return out


def explain_dataset(ds, model, composite=None, *, mode: str = "logit", target=None, target_column: str | None = None,
                    output_column: str = "relevance", batch_size: int = 16, actors: int | None = None,
                    cpus_per_actor: int = 1, gpus_per_actor: float = 0, output=None, inputs=None):
    """Add each row's relevance to a Ray Dataset (lazily, like every Ray Data transform).

    ds: rows with one column per model input, named like the model's inputs.
    model: the ONNX model's path. composite: as for Explainer (an object or a name).
    target: None (each row's predicted class) or a class for every row; target_column: a column of
        per-row classes instead (-1: the predicted class).
    Adds `output_column` (the relevance of the explained input; other explained inputs get
    `<output_column>_<input name>`) and `target_explained`. The explainer runs in `actors` actors
    (default: as many as the cluster's CPUs allow), each with `cpus_per_actor` onnxruntime threads and,
    with gpus_per_actor > 0, the CUDA execution provider.
    """
    if mode == "custom":
        raise OnnxLrpError("explain_dataset starts from a target class; use mode logit, one, prob or contrastive")
    options = dict(output=output, inputs=inputs)
    arguments = (_model_path(model), composite, mode, int(cpus_per_actor), gpus_per_actor > 0, options,
                 target, target_column, output_column)
    return _on_actors(ds, ExplainerActor, arguments, batch_size, actors, cpus_per_actor, gpus_per_actor)


class FileActor:
    """The command line's batch job on Ray: each actor explains files and writes their outputs itself."""

    def __init__(self, model_path: str, composite, options: dict, settings, threads: int, gpu: bool):
        self.explainer = _actor_explainer(model_path, composite, options, threads, gpu)
        self.settings = settings

    def __call__(self, batch: dict) -> dict:
        from .batch import Item, explain_items

        items = [Item(Path(path), key) for path, key in zip(batch["path"], batch["key"])]
        outcomes = [future.result() for future in explain_items(self.explainer, items, self.settings)]
        return {"path": [str(o.item.path) for o in outcomes], "key": [o.item.key for o in outcomes],
                "error": [o.error or "" for o in outcomes], "note": [o.note for o in outcomes]}


def run_job_on_ray(job, model, explainer, address: str = "local", actors: int | None = None,
                   cpus_per_actor: int = 1, gpus_per_actor: float = 0):
    """Run a batch.Job's pending files on Ray ('local': start Ray here; 'auto' or ray://...: join a cluster),
    recording each outcome in job.summary as it comes back."""
    from dataclasses import replace

    from .batch import Outcome
    from .progress import progress_bar

    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    # our own progress bar and summary say enough
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not job.pending:
        return job.summary
    settings = replace(job.settings, out=job.settings.out.resolve())
    originals = {str(item.path.resolve()): item for item in job.pending}    # actors get absolute paths
    rows = [{"path": path, "key": item.key} for path, item in originals.items()]
    options = dict(output=explainer.output, inputs=explainer.explained_inputs)
    arguments = (_model_path(model), explainer.composite, options, settings, int(cpus_per_actor), gpus_per_actor > 0)
    ds = _on_actors(ray.data.from_items(rows), FileActor, arguments, job.batch_size, actors, cpus_per_actor,
                    gpus_per_actor)
    with progress_bar(len(job.pending), "explaining on ray", job.show_progress) as bar:
        for row in ds.iter_rows():
            job.record([Outcome(originals[row["path"]], row["error"] or None, row["note"])], bar)
    return job.summary
