"""The `onnxlrp` command line: compile, export, explain, evaluate, bench, inspect."""
from __future__ import annotations

import argparse
import inspect as pyinspect
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from . import __version__
from . import composites as composites_module
from . import extras
from .errors import OnnxLrpError

COMPOSITE_HELP = ("composite (default epsilon_plus_flat): " + ", ".join(sorted(composites_module.NAMED))
                  + "; epsilon_gamma_box needs --low and --high")


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _floats(text: str):
    values = _float_list(text)
    return values[0] if len(values) == 1 else np.array(values, dtype=np.float32).reshape(-1, 1, 1)


def _add_composite_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rules")
    group.add_argument("--composite", default=None, help=COMPOSITE_HELP + " (explain --prompt: attn_lrp)")
    group.add_argument("--low", type=_floats, help="lowest input value for ZBox (a number, or one per channel: -2.1,-2.0,-1.8)")
    group.add_argument("--high", type=_floats, help="highest input value for ZBox (a number, or one per channel)")
    group.add_argument("--epsilon", type=float, help="epsilon of the Epsilon rule (default 1e-6)")
    group.add_argument("--gamma", type=float, help="gamma of the Gamma rule (default 0.25)")
    group.add_argument("--declare", action="append", default=[], metavar="OP=pass|linear",
                       help="treat an op without a relevance handler as Pass (relevance unchanged) or as a linear "
                       "map of its first input (Norm, Jacobian probed at compile time); repeatable")
    group.add_argument("--memory", choices=["default", "low"], default="default",
                       help="low: recompute the forward tensors the relevance pass reads from checkpoints at the "
                       "residual joins instead of keeping them (long prompts, large images; same relevance)")
    group = parser.add_argument_group("what to explain")
    group.add_argument("--output", dest="model_output", default=None,
                       help="which model output to explain (name or index; default the first float output)")
    group.add_argument("--input", dest="model_input", default=None,
                       help="the input to explain when the model has several (default the first float input); "
                       "the others get relevance too")


def _add_written_model_options(parser: argparse.ArgumentParser, mode_help: str) -> None:
    """compile and export: where the written explainer starts, and how its weights are stored."""
    from .compiler.start import MODES

    parser.add_argument("--mode", default="logit", choices=list(MODES), help=mode_help)
    parser.add_argument("--external-data", action="store_true",
                        help="keep the weights in a separate file beside the model (always done for models over "
                        "2 GB); onnxruntime maps them into memory, which lowers a session's peak memory")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    """What explain and evaluate share: the class explained, where it starts, image normalisation."""
    parser.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted class)")
    parser.add_argument("--mode", default="logit", choices=["logit", "one", "prob", "contrastive", "mean_contrast"],
                        help="where the explanation starts (default logit)")
    parser.add_argument("--mean", type=_float_list, help="per-channel mean for images, e.g. 0.485,0.456,0.406")
    parser.add_argument("--std", type=_float_list, help="per-channel std for images, e.g. 0.229,0.224,0.225")


def _composite_from(args, default: str = "epsilon_plus_flat"):
    if args.composite is None:
        args.composite = default
    name = args.composite.strip().lower().replace("-", "_")
    if name not in composites_module.NAMED:
        raise OnnxLrpError(f"unknown composite '{args.composite}'; known: {', '.join(sorted(composites_module.NAMED))}")
    factory = composites_module.NAMED[name]
    accepted = set(pyinspect.signature(factory).parameters)
    given = {k: getattr(args, k) for k in ("low", "high", "epsilon", "gamma") if getattr(args, k) is not None}
    ignored = sorted(set(given) - accepted)
    if ignored:
        print(f"note: {args.composite} does not use --{', --'.join(ignored)}", file=sys.stderr)
    params = {k: v for k, v in given.items() if k in accepted}
    missing = [p.name for p in pyinspect.signature(factory).parameters.values()
               if p.default is pyinspect.Parameter.empty and p.name not in params]
    if missing:
        raise OnnxLrpError(f"composite {args.composite} needs --{' --'.join(missing)}")
    composite = factory(**params)
    declared = [_declaration(text) for text in args.declare]
    return composites_module.LayerMap(declared, base=composite) if declared else composite


def _declaration(text: str):
    from . import rules

    op, _, treatment = text.partition("=")
    treatments = {"pass": rules.Pass, "linear": rules.Norm}
    if not op or treatment.lower() not in treatments:
        raise OnnxLrpError(f"--declare '{text}': expected OP=pass or OP=linear, e.g. --declare DepthToSpace=linear")
    return op, treatments[treatment.lower()]()


def _model_inputs(args):
    return [args.model_input] if args.model_input else None


def _model_output(args):
    value = args.model_output
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def cmd_compile(args) -> int:
    from .compiler import compile as compile_model

    composite = _composite_from(args)
    models = [Path(m) for m in args.models]
    if args.out and len(models) > 1:
        raise OnnxLrpError("-o names one output file; with several models use --out-dir")
    failures = 0
    for model in models:
        target = Path(args.out) if args.out else (Path(args.out_dir) if args.out_dir else model.parent) / (
            model.name[:-5] + ".lrp.onnx" if model.name.endswith(".onnx") else model.name + ".lrp.onnx")
        if target.resolve() == model.resolve():
            raise OnnxLrpError(f"refusing to overwrite the input model '{model}'")
        try:
            written = compile_model(model, target, composite=composite, mode=args.mode, output=_model_output(args),
                                    inputs=_model_inputs(args), external_data=True if args.external_data else None,
                                    memory=args.memory)
            print(f"{model} -> {written}")
        except OnnxLrpError as exc:
            failures += 1
            print(f"error: {model}: {exc}", file=sys.stderr)
    return 2 if failures == len(models) else (1 if failures else 0)   # 2: nothing compiled


def cmd_export(args) -> int:
    from .export import export

    options = dict(device=args.device, overwrite=args.overwrite, external_data=True if args.external_data else None)
    if args.format == "triton":
        options.update(version=args.version, max_batch_size=args.max_batch_size, instances=args.instances,
                       threads=args.threads, queue_delay_us=args.queue_delay_us)
    written = export(args.model, args.out, format=args.format, composite=_composite_from(args), mode=args.mode,
                     output=_model_output(args), inputs=_model_inputs(args), name=args.name, memory=args.memory,
                     **options)
    print(f"{args.model} -> {written}")
    if args.format == "triton":
        print(f"serve it: tritonserver --model-repository={Path(args.out).resolve()}  (see docs/deployment.md)")
    else:
        print(f"serve it: mlflow models serve -m {written} --env-manager local -p 5000  (see docs/deployment.md)")
    return 0


def cmd_explain(args) -> int:
    from .batch import Job, Settings, find_inputs
    from .runtime import Explainer

    if args.top_k is not None and args.target is not None:
        raise OnnxLrpError("give either --target or --top-k, not both")
    if args.prompt is not None:
        return _explain_prompt(args)
    if args.text is not None or args.texts is not None:
        return _explain_texts(args)
    if not args.inputs:
        raise OnnxLrpError("give INPUT files (images, .npy, folders, globs), or --text/--texts with --tokenizer")
    composite = _composite_from(args)
    explainer = Explainer(args.model, composite=composite, output=_model_output(args), inputs=_model_inputs(args),
                          threads=args.threads, memory=args.memory)
    selection = _selection(args)
    mode = "select" if selection else args.mode
    compiled = _compiled_for_inputs(explainer, mode)
    primary = next(iter(compiled.relevance_outputs))
    settings = Settings(out=Path(args.out), shape=_shape(compiled, primary), primary=primary,
                        fixed=_fed_inputs(args.feed, compiled, primary), target=args.target,
                        top_k=args.top_k, mode=args.mode, mean=args.mean, std=args.std,
                        pictures=not args.no_pictures, selection=selection,
                        feature_names=_feature_names(args.feature_names, explainer.model))
    items, problems = find_inputs(args.inputs)
    for spec, reason in problems:
        print(f"error: {spec}: {reason}", file=sys.stderr)
    if not items:
        raise OnnxLrpError("nothing was explained: none of the INPUTs is a file that can be read (see above)")
    verbose = args.verbose or len(items) <= 10
    job = Job(items, settings, batch_size=args.batch_size or 16, overwrite=args.overwrite, show_progress=not args.quiet,
              verbose=verbose)
    interrupted = False
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None  # a scheduler's stop: as Ctrl-C
    try:
        if args.ray:
            from .distributed import run_job_on_ray
            run_job_on_ray(job, args.model, explainer, address=args.ray, actors=args.actors,
                           cpus_per_actor=args.threads or 1, gpus_per_actor=args.gpus_per_actor)
        else:
            job.run(explainer)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    failures = job.write_failures()
    summary = job.summary
    where = f"; results in {settings.out}/" if summary.explained or summary.skipped else "; nothing was written"
    print(summary.line() + where + (f"; failures listed in {failures}" if failures else ""))
    if interrupted:
        print("interrupted: run the same command again to go on where it stopped", file=sys.stderr)
        return 130
    return 1 if summary.failed or problems else 0


def _explain_texts(args) -> int:
    from .runtime import Explainer
    from .text import explain_texts, load_tokenizer, read_texts

    if args.inputs or (args.text is not None and args.texts is not None):
        raise OnnxLrpError("give one of INPUT files, --text or --texts")
    if not args.tokenizer:
        raise OnnxLrpError("--text/--texts need --tokenizer tokenizer.json")
    tokenizer = load_tokenizer(args.tokenizer)
    texts = read_texts(args.text, args.texts)
    explainer = Explainer(args.model, composite=_composite_from(args), output=_model_output(args),
                          inputs=_model_inputs(args), threads=args.threads,
                          memory=args.memory)
    out = Path(args.out)
    done, skipped = explain_texts(explainer, texts, tokenizer, out, target=args.target, overwrite=args.overwrite,
                                  show=not args.quiet)
    print(f"{done} explained, {skipped} already done; results in {out}/")
    return 0


def _explain_prompt(args) -> int:
    """A language model's greedy answer to --prompt, and what every token of it rests on."""
    from .generation_page import generation_table, write_generation
    from .llm import model_file, tokenizer_beside
    from .runtime import Explainer
    from .text import load_tokenizer

    if args.inputs or args.text is not None or args.texts is not None:
        raise OnnxLrpError("--prompt explains a generated answer: give no INPUT files, --text or --texts with it")
    if args.target is not None or args.top_k is not None:
        raise OnnxLrpError("--prompt explains every generated token: give no --target or --top-k with it")
    if args.max_new_tokens < 1:
        raise OnnxLrpError(f"--max-new-tokens must be at least 1; got {args.max_new_tokens}")
    path = model_file(args.model)
    tokenizer_path = args.tokenizer or tokenizer_beside(path)
    if tokenizer_path is None:
        raise OnnxLrpError(f"no tokenizer.json beside '{path}': give --tokenizer tokenizer.json")
    tokenizer = load_tokenizer(str(tokenizer_path))
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        raise OnnxLrpError(f"the tokenizer made no tokens of {args.prompt!r}")
    composite = _composite_from(args, default="attn_lrp")
    explainer = Explainer(str(path), composite=composite, output=_model_output(args), inputs=_model_inputs(args),
                          threads=args.threads, memory=args.memory)
    eos = None
    if args.eos_token_id is not None:
        try:
            eos = [] if args.eos_token_id.strip().lower() == "none" else _int_list(args.eos_token_id)
        except argparse.ArgumentTypeError as exc:
            raise OnnxLrpError(f"--eos-token-id: {exc}") from None
    generation = explainer.explain_generation(ids, max_new_tokens=args.max_new_tokens, eos_token_id=eos,
                                              mode=args.mode, batch_size=args.batch_size or 8)
    name = f"{path.parent.parent.name}/{path.parent.name}" if path.name == "model.onnx" else path.stem
    table = generation_table(generation, tokenizer, prompt=args.prompt, model=name, composite=args.composite)
    out = Path(args.out)
    write_generation(out, table, generation.relevance)
    print(f"{args.prompt} -> {table['answer']!r}  ({len(generation.new_ids)} new tokens, "
          f"{'stopped at the end-of-sequence token' if generation.stopped == 'eos' else 'max-new-tokens reached'})")
    print(f"results in {out}/: generation.html (open it: hover or click a word of the answer), generation.json, "
          "generation.relevance.npy")
    return 0


def cmd_concepts(args) -> int:
    from .batch import find_inputs
    from .concepts import concept_atlas, top_concepts_of
    from .runtime import Explainer

    explainer = Explainer(args.model, composite=_composite_from(args), output=_model_output(args),
                          inputs=_model_inputs(args), threads=args.threads,
                          memory=args.memory)
    compiled = _compiled_for_inputs(explainer, "logit")
    primary = next(iter(compiled.relevance_outputs))
    shape = _shape(compiled, primary)
    items, problems = find_inputs(args.inputs)
    for spec, reason in problems:
        print(f"error: {spec}: {reason}", file=sys.stderr)
    if not items:
        raise OnnxLrpError("no inputs to explain")
    out = Path(args.out)
    if args.references is not None:
        if args.references < 1:
            raise OnnxLrpError("--references must be at least 1")
        index = concept_atlas(explainer, items, shape, args.layer, args.references, out, target=args.target,
                              mean=args.mean, std=args.std, batch_size=args.batch_size,
                              show_progress=not args.quiet, overwrite=args.overwrite)
        print(f"concept atlas of {args.layer} over {len(items)} input(s): {index}")
        return 1 if problems else 0
    for item in items:
        table = top_concepts_of(explainer, item, shape, args.layer, args.top, out, target=args.target,
                                mean=args.mean, std=args.std)
        listed = ", ".join(f"{c['channel']} ({c['relevance_share']:+.1%})" for c in table["concepts"])
        print(f"{item.path}: class {table['target']}; top channels of {args.layer}: {listed}")
    print(f"results in {out}/")
    return 1 if problems else 0


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .serve.app import create_app
    except ImportError as exc:
        raise extras.missing("serve", "onnxlrp serve", exc) from None
    tokenizers = {}
    for spec in args.tokenizer:
        name, _, path = spec.rpartition("=")
        tokenizers[name] = path
    app = create_app(args.models, max_upload=int(args.max_upload_mb * 1024**2), tokenizers=tokenizers)
    print(f"serving {', '.join(app.state.served)} at http://{args.host}:{args.port}/ (API docs: /docs; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _feature_names(spec: str | None, model) -> list[str] | None:
    if spec:
        path = Path(spec)
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [name.strip() for name in spec.split(",")]
    stored = next((e.value for e in model.metadata_props if e.key == "feature_names"), None)
    return [name.strip() for name in stored.split(",")] if stored else None


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas; got {text!r}") from None


def _selection(args) -> dict:
    """--region/--mask/--box/--direction as Explainer.explain's keywords."""
    selection = {}
    if args.region is not None:
        if len(args.region) != 4:
            raise OnnxLrpError(f"--region takes Y0,X0,Y1,X1; got {args.region}")
        selection["region"] = tuple(args.region)
    if args.mask is not None:
        if not Path(args.mask).is_file():
            raise OnnxLrpError(f"--mask file '{args.mask}' does not exist")
        selection["mask"] = args.mask
    if args.box is not None:
        selection["box"] = args.box
    if args.direction is not None:
        try:
            selection["direction"] = np.load(args.direction, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OnnxLrpError(f"--direction: cannot read '{args.direction}' as .npy: {exc}") from None
    if len([k for k in selection if k != "layout"]) > 1:
        raise OnnxLrpError("give one of --region, --mask, --box, --direction")
    if selection and args.top_k is not None:
        raise OnnxLrpError("--top-k explains classes; it does not combine with --region/--mask/--box/--direction")
    if selection and args.layout:
        selection["layout"] = args.layout
    return selection


def _compiled_for_inputs(explainer, mode: str):
    """The compiled explainer whose inputs the command line reads (names, shapes); a model whose inputs
    have free non-batch dims is compiled per input size later, so read it at one size here only to learn
    the names (its shape stays free)."""
    from .model import free_input_dims
    free = free_input_dims(explainer.model)
    if not free or explainer.composite.form == "gradient":
        return explainer.compiled(mode)
    value = next(v for v in explainer.model.graph.input if v.name == free[0])
    probe = {free[0]: tuple(d.dim_value or 32 for d in list(value.type.tensor_type.shape.dim)[1:])}
    compiled = explainer.compiled(mode, shapes=probe)
    return _FreeShapes(compiled, explainer.model)


class _FreeShapes:
    """A compiled explainer seen with the model's own (free) input dims."""

    def __init__(self, compiled, model):
        self._compiled, self.model_inputs = compiled, {v.name: v for v in model.graph.input}

    def __getattr__(self, name):
        return getattr(self._compiled, name)


def _stop(signum, frame):
    raise KeyboardInterrupt


def _fed_inputs(feeds: list[str], compiled, primary: str) -> dict[str, np.ndarray]:
    """--feed NAME=FILE.npy: the model's other inputs, one sample each, the same for every INPUT."""
    fixed = {}
    for text in feeds:
        name, _, path = text.partition("=")
        if name not in compiled.inputs or name == primary or not path:
            raise OnnxLrpError(f"--feed '{text}': expected NAME=FILE.npy with NAME one of the model's other inputs "
                               f"{[i for i in compiled.inputs if i != primary]}")
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OnnxLrpError(f"--feed {name}: cannot read '{path}' as .npy: {exc}") from None
        fixed[name] = value[None] if value.ndim == len(_shape(compiled, name)) - 1 else value[:1]
    missing = [i for i in compiled.inputs if i != primary and i not in fixed]
    if missing:
        raise OnnxLrpError(f"the model also takes {missing}; give each with --feed NAME=FILE.npy")
    return fixed


def _shape(compiled, name: str) -> list:
    """An input's dims: ints, None where free (the batch; a segmenter's H x W)."""
    from .export.tensors import graph_tensors

    if isinstance(compiled, _FreeShapes):
        dims = compiled.model_inputs[name].type.tensor_type.shape.dim
        return [None] + [d.dim_value if d.HasField("dim_value") else None for d in list(dims)[1:]]
    return list(next(t.dims for t in graph_tensors(compiled.model)[0] if t.name == name))


CHECK_NAMES = ("heatmaps", "conservation", "pixel-flipping", "randomisation", "convergence", "continuity")


def _check_names(text: str) -> list[str]:
    names = [name.strip().lower().replace("_", "-") for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHECK_NAMES + ("all",)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check {', '.join(unknown) or text!r}; choose from all, "
                                         + ", ".join(CHECK_NAMES))
    return list(CHECK_NAMES) if "all" in names else list(dict.fromkeys(names))


def cmd_evaluate(args) -> int:
    from .evaluate import Evaluation, run
    from .inputs import channels_last, load_input
    from .runtime import Explainer

    explainer = Explainer(args.model, composite=_composite_from(args), output=_model_output(args),
                          inputs=_model_inputs(args), threads=args.threads,
                          memory=args.memory)
    compiled = explainer.compiled(args.mode)
    primary = next(iter(compiled.relevance_outputs))
    if len(compiled.inputs) != 1:
        raise OnnxLrpError(f"evaluate runs on single-input models; this one takes {compiled.inputs}")
    shape = _shape(compiled, primary)
    samples = []
    for path in args.inputs:
        try:
            samples.append(load_input(path, shape, mean=args.mean, std=args.std))
        except OnnxLrpError as exc:
            print(f"error: {exc} (skipped)", file=sys.stderr)
    if not samples:
        raise OnnxLrpError("no input could be read")
    evaluation = Evaluation(model=args.model, explainer=explainer, x=np.stack(samples), channels_last=channels_last(shape),
                            out=Path(args.out), target=args.target, mode=args.mode, seed=args.seed,
                            patch_size=args.patch_size, perturbation=args.perturbation, steps=args.steps,
                            order=args.order, max_layers=args.max_layers, injections=args.injections,
                            inject_at=args.inject_at,
                            show_progress=not args.quiet)
    report = run(evaluation, args.checks)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def cmd_bench(args) -> int:
    from . import bench
    from .model import load_model
    from .runtime import CUDA_PROVIDERS

    load_model(args.model)        # a broken or hostile model is refused before any session is built
    names = [n.strip() for n in args.composites.split(",") if n.strip()]
    for name in names:
        bench.composite_for(name)     # an unknown name fails before any timing
    batches = [int(b) for b in args.batches.split(",")]
    providers = CUDA_PROVIDERS if args.device == "gpu" else None
    print(f"machine: {bench.machine(providers)}; threads {args.threads}; warm-up {args.warmup}; "
          f"median of {args.repeats} in {args.rounds} rounds")
    rows = bench.benchmark(args.model, names, batches, args.threads, args.warmup, args.repeats,
                           memory=not args.no_memory and args.device == "cpu", providers=providers,
                           rounds=args.rounds)
    print(bench.table(rows, model_mb=Path(args.model).stat().st_size / 1e6))
    return 0


def cmd_inspect(args) -> int:
    from .inspect import format_report, inspect_model

    report = inspect_model(args.model, composite=_composite_from(args), output=_model_output(args),
                           inputs=_model_inputs(args))
    print(format_report(report))
    return 1 if report.problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxlrp", description="Layer-wise Relevance Propagation for ONNX models: "
                                     "compile or export an explainer model, explain inputs (batch jobs, Ray), check "
                                     "explanations, time them, inspect rules.")
    parser.add_argument("--version", action="version", version=f"onnxlrp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="write the explainer model (forward + relevance graph) for one or more models",
                       description="Compile MODEL into an explainer .onnx: the model's own inputs plus 'target', "
                       "its own outputs plus one relevance tensor per input. The input file is never modified.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="ONNX model file(s)")
    p.add_argument("-o", "--out", help="output file (default MODEL.lrp.onnx beside the model)")
    p.add_argument("--out-dir", help="folder for the outputs when compiling several models")
    _add_written_model_options(p, mode_help="where the explanation starts (default logit)")
    _add_composite_options(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("export", help="write the explainer model for an inference server (Triton or MLflow)",
                       description="Compile the explainer model and write it as a Triton Inference Server model "
                       "repository (onnxruntime backend, config.pbtxt with dynamic batching) or as an MLflow "
                       "model (ONNX flavour). The served model takes the model's inputs and a target per sample "
                       "(-1: the predicted class) and returns the model's outputs, the relevance and the class "
                       "explained.")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("--format", required=True, choices=["triton", "mlflow"], help="triton or mlflow")
    p.add_argument("--out", required=True, help="triton: the model repository folder (the model goes to "
                   "OUT/NAME/); mlflow: the model folder to create")
    _add_written_model_options(p, mode_help="where the explanation starts (custom: the server takes the start "
                               "relevance as an input)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the server runs it (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export (triton: that version)")
    group = p.add_argument_group("triton")
    group.add_argument("--name", default=None, help="model name in the repository (default: MODEL's stem + _lrp)")
    group.add_argument("--version", type=int, default=1, help="model version folder (default 1)")
    group.add_argument("--max-batch-size", type=int, default=8,
                       help="largest batch Triton forms from queued requests (default 8; 0: no batching)")
    group.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    group.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads per instance")
    group.add_argument("--queue-delay-us", type=int, default=100, metavar="US",
                       help="how long Triton's dynamic batcher waits for more requests to join a batch (default 100)")
    _add_composite_options(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explain", help="explain images or .npy inputs (files, folders, globs): heatmaps and relevance",
                       description="Explain each INPUT: an image or a .npy array of one sample, a folder (searched "
                       "recursively for both) or a glob pattern ('data/**/*.png', quoted). Images are converted "
                       "to RGB, resized to the model's input size, scaled to [0, 1], then normalised with "
                       "--mean/--std if given. Writes OUT/<name>.heatmap.png, OUT/<name>.overlay.png (the heatmap "
                       "over the input, for image-shaped inputs) and OUT/<name>.relevance.npy, where <name> keeps "
                       "the input's path below its folder. Resumable: an input whose .relevance.npy exists is "
                       "skipped, so an interrupted job goes on where it stopped when started again. Inputs that "
                       "fail are reported, listed in OUT/failed.txt and skipped; the exit code is then 1.")
    p.add_argument("model", metavar="MODEL", help="ONNX model file (with --prompt also its folder)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, .npy arrays, folders or glob patterns")
    _add_input_options(p)
    group = p.add_argument_group("outputs that are not [batch, classes] (R = output * mask; --target is the class)")
    group.add_argument("--region", type=_int_list, default=None, metavar="Y0,X0,Y1,X1",
                       help="a segmentation's class --target within this box of output pixels (half-open)")
    group.add_argument("--mask", default=None, metavar="FILE.png",
                       help="a segmentation's class --target where this image is non-zero (resized to the output)")
    group.add_argument("--box", type=int, default=None, metavar="N",
                       help="the class --target score of detection N of a YOLO-style [batch, boxes, 4+1+C] or "
                       "[batch, 4+C, boxes] output")
    group.add_argument("--direction", default=None, metavar="FILE.npy",
                       help="an embedding or regression output along this vector (R = z * r: with another input's "
                       "embedding, why the two are close)")
    group.add_argument("--feature-names", default=None, metavar="A,B,C|FILE",
                       help="names of a 1-D input's features for the per-feature bar chart (<name>.features.png): "
                       "comma-separated, or a file with one a line (default: the model's feature_names metadata, "
                       "or a CSV file's header)")
    group.add_argument("--layout", default=None, choices=["NCHW", "NHWC", "boxes_first", "attributes_first"],
                       help="the output's layout for --region/--mask (NCHW, NHWC) or --box (default: from its shape)")
    group = p.add_argument_group("text models (needs the [text] extra; e.g. --composite attn_lrp)")
    group.add_argument("--text", default=None, help="a sentence to explain, instead of INPUTs: writes "
                       "OUT/text.tokens.html, OUT/text.tokens.json and OUT/text.relevance.npy")
    group.add_argument("--texts", default=None, metavar="FILE.txt", help="a file of texts, one a line "
                       "(OUT/<file>-<line>.*; resumable like INPUTs)")
    group.add_argument("--tokenizer", default=None, metavar="tokenizer.json",
                       help="the HuggingFace tokenizer.json that feeds input_ids, attention_mask and token_type_ids "
                       "(--prompt: by default the one beside the model)")
    group = p.add_argument_group("language models: a generated answer (e.g. MODEL an onnxruntime-genai or optimum "
                                 "folder; composite attn_lrp unless --composite)")
    group.add_argument("--prompt", default=None, help="generate greedily from this prompt, then explain every new "
                       "token by every token before it: OUT/generation.html (hover or click a word of the answer), "
                       "OUT/generation.json and OUT/generation.relevance.npy ([new tokens, all tokens])")
    group.add_argument("--max-new-tokens", type=int, default=20, metavar="N",
                       help="tokens to generate at most (default 20)")
    group.add_argument("--eos-token-id", default=None, metavar="ID[,ID]|none",
                       help="ids that end the answer (default: the model folder's generation_config.json, config.json "
                       "or genai_config.json); none: always generate --max-new-tokens")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="explain each input's K highest-scoring classes in one run: one heatmap per class "
                   "(<name>.class<c>.*), a side-by-side grid <name>.targets.png and <name>.targets.json")
    p.add_argument("--out", default="heatmaps", help="output folder (default heatmaps/)")
    p.add_argument("--batch-size", type=int, default=None, help="inputs per onnxruntime run (default 16; --prompt: "
                   "new tokens explained per run, default 8)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores; "
                   "with --ray: per actor, default 1)")
    p.add_argument("--feed", action="append", default=[], metavar="NAME=FILE.npy",
                   help="a value for another model input (one sample, used for every INPUT); repeatable")
    p.add_argument("--overwrite", action="store_true", help="explain every input again, even those already done")
    p.add_argument("--no-pictures", action="store_true", help="write only the relevance .npy files (no PNGs), "
                   "for large jobs whose heatmaps are drawn later")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per input (the default up to 10 inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("cluster (needs the [ray] extra)")
    group.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run on Ray: 'local' starts Ray on this machine, 'auto' or ray://HOST:PORT joins a "
                       "cluster; OUT must be a folder every node can write")
    group.add_argument("--actors", type=int, default=None, help="explainer actors (default: the cluster's CPUs / threads)")
    group.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs per actor (CUDA provider when > 0)")
    _add_composite_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("concepts", help="what a layer's channels stand for (CRP): an input's top concepts, or a "
                       "concept atlas over a data set",
                       description="Concept relevance (CRP) at --layer (an ONNX node or tensor name; `onnxlrp inspect` "
                       "lists them). With --top K (default): for each INPUT, the K channels with the highest concept "
                       "relevance for the explained class, their shares of the layer's relevance, and their "
                       "conditional heatmaps: OUT/<name>.concepts.png (a grid: the plain heatmap, then one per "
                       "channel), .concepts.json and .concepts.npy. With --references N (relevance maximisation "
                       "over all INPUTs, e.g. a folder): for every channel the N inputs with the highest concept "
                       "relevance, with their conditional heatmaps for it, as OUT/channels/<c>.png and a concept "
                       "atlas page OUT/index.html; resumable (OUT/relevance/ keeps each input's concept relevance).")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, .npy arrays, folders or glob patterns")
    p.add_argument("--layer", required=True, help="the layer whose channels are the concepts")
    p.add_argument("--top", type=int, default=6, metavar="K", help="concepts per input (default 6)")
    p.add_argument("--references", type=int, default=None, metavar="N",
                   help="build the concept atlas: N reference inputs per channel")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--mean", type=_float_list, help="per-channel mean for images, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_float_list, help="per-channel std for images, e.g. 0.229,0.224,0.225")
    p.add_argument("--out", default="concepts", help="output folder (default concepts/)")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per onnxruntime run (default 16)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="recompute the atlas' concept relevance of every input")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_composite_options(p)
    p.set_defaults(func=cmd_concepts)

    p = sub.add_parser("serve", help="a local web page and JSON API that explain images, texts and generated "
                       "answers with the given models",
                       description="Serve MODEL(s) at http://HOST:PORT/: a page where you drop or pick an image, see "
                       "the top classes, click one to explain it, choose the composite, its parameters and the start, "
                       "compare composites side by side and download the heatmap and the relevance; for a language "
                       "model, type a prompt, see the answer and click a word of it to see what it rests on; and a "
                       "JSON API (POST /v1/explain, POST /v1/generate, GET /v1/models; OpenAPI docs at /docs). Binds "
                       "to 127.0.0.1 unless --host says otherwise. Needs the [serve] extra. docs/serve.md.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="ONNX image classifiers, text models, and language "
                   "models (a file, or an onnxruntime-genai / optimum folder with its tokenizer.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=8, help="largest request accepted (default 8 MB)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="[MODEL=]tokenizer.json",
                   help="the HuggingFace tokenizer.json of a text model (MODEL: its name, the file stem or a "
                   "model.onnx's folder; without it, every text model's; default the tokenizer.json beside it); the "
                   "page then takes a sentence, or a prompt for a language model")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("evaluate", help="checks that say whether an explanation can be trusted, as a report",
                       description="Run checks on MODEL over the INPUT files and write OUT/report.md with its "
                       "pictures (plots need matplotlib). Checks: heatmaps (overlays of this composite and others), "
                       "conservation (relevance sum and negative share per layer), pixel-flipping (MoRF/LeRF "
                       "region perturbation, AOPC, ABPC, against random and gradient x input orderings), "
                       "randomisation (Adebayo et al.'s model-parameter randomisation), convergence "
                       "(cosine-similarity convergence, class sensitivity), continuity, or all. "
                       "docs/checks.md explains how to read each.")
    p.add_argument("checks", type=_check_names, metavar="CHECK[,CHECK...]",
                   help="one or more, comma-separated, of: all, " + ", ".join(CHECK_NAMES))
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or .npy arrays")
    _add_input_options(p)
    p.add_argument("--out", default="evaluation", help="report folder (default evaluation/)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    group = p.add_argument_group("pixel-flipping")
    group.add_argument("--patch-size", type=int, default=4, help="side of the square patches in pixels (default 4)")
    group.add_argument("--perturbation", default="uniform", choices=["uniform", "blur", "constant"],
                       help="what replaces a patch: uniform noise over the input's range, a Gaussian blur of the "
                       "input, or 0 (default uniform)")
    group.add_argument("--steps", type=int, default=None, help="perturbation steps (default: every patch, at most 100)")
    group = p.add_argument_group("randomisation and convergence")
    group.add_argument("--order", default="cascading", choices=["cascading", "independent"],
                       help="randomise layers from the top cumulatively, or one at a time (default cascading)")
    group.add_argument("--max-layers", type=int, default=None, help="randomise only the top N layers (default all)")
    group.add_argument("--injections", type=int, default=8, help="random relevance vectors per input (default 8)")
    group.add_argument("--inject-at", default=None, metavar="TENSOR",
                       help="convergence: inject at this tensor (a node output) instead of the logits")
    _add_composite_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="time explanations against plain onnxruntime inference of the model",
                       description="Time plain onnxruntime inference of MODEL and one explanation per composite "
                       "(logit mode, the predicted class) in one process, with the same threads, warm-up and "
                       "repeats; print the medians, the ratio explain / inference, the compile time and the "
                       "peak memory of each (measured in a fresh child process). tools/bench.py adds Zennit on "
                       "VGG-16 and ResNet-50.")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("--composites", default="epsilon_plus_flat,epsilon_gamma_box",
                   help="comma-separated composite names (default epsilon_plus_flat,epsilon_gamma_box; "
                   "epsilon_gamma_box with bounds -3, 3)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads "
                   "(default: all cores)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per case; the median is reported (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="the cases are timed in turns, over this many rounds "
                   "(default 3), so that drifts of the machine's speed hit them alike")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="cpu, or gpu (CUDA execution provider)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("inspect", help="show the rule each layer gets and the ops that cannot be explained",
                       description="Print node -> rule/treatment for every node between the input and the logits, "
                       "and a clear message with a remedy for each unsupported op. Exit code 1 if any.")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    _add_composite_options(p)
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OnnxLrpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad rule parameters, e.g. AlphaBeta(alpha - beta != 1)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory (a smaller --batch-size, or a machine with more memory)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, the traceback on request
        if os.environ.get("ONNXLRP_DEBUG"):
            raise
        text = str(exc).strip().splitlines()
        print(f"error: internal error, {type(exc).__name__}: {text[0][:300] if text else ''} (a bug in onnxlrp: "
              "please report it with the model; ONNXLRP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
