"""``dosediffusion-train``: data preparation (and, as they land, the training stages).

``dosediffusion-train convert PATH --out OUT``: any case ``dosediffusion`` reads (DICOM RT
folder, case sidecar, GDP-HMM npz) → a GDP-HMM-layout ``.npz`` (OUT ending in ``.npz``) or a
NRRD + ``case.json`` folder (any other OUT).

``dosediffusion-train synth --out DIR --n N --seed S [--sites thorax,head_neck,pelvis --concave-share 0.3]``:
synthetic phantoms of the sites (taking turns by seed; a share with a C-shaped high PTV wrapping an
organ at risk) with pyRadPlan doses (see :mod:`dosediffusion_training.synth.generate`; needs the
engine environment).

``dosediffusion-train split DATA --out split.json``: a seeded train/val/test split of the cases in
DATA.

``dosediffusion-train cache-latents --config RUN.yaml --out DIR [--shard-gib G --batch-size N --device D]``:
every training case of the run encoded once by its frozen codec into sharded safetensors files and an
index (:mod:`dosediffusion_training.data.latent_cache`); resumable. A run with ``data.latent_cache: DIR``
then trains stages A and B on them.

``dosediffusion-train fit-codec --config CODEC.yaml --out DIR``: a small VAE codec for the modalities,
trained on the cases and then frozen (:mod:`dosediffusion_training.training.codec_training`); a run
uses ``DIR/vae`` as its ``codec: {type: wan_vae, path: DIR/vae}``.

``dosediffusion-train fit --config RUN.yaml --out DIR``: train as the run configuration says
(:mod:`dosediffusion_training.training.loop`; ``train.stage: C`` runs ScardNFT,
:mod:`dosediffusion_training.training.scardnft`); resumes from ``DIR/checkpoints`` when present.
Under ``accelerate launch`` it runs on every process.

``dosediffusion-train merge-lora --pipeline DIR --adapter DIR --out DIR``: a stage C adapter
merged into plain weights, written as a pipeline folder.

``dosediffusion-train evaluate --model DIR [--model DIR ...] --data DIR [--split-file F --split test]
--out DIR [--candidates N]``: per-case and aggregated metrics with paired tests
(:mod:`dosediffusion_training.evaluation`); with N ≥ 2 the best of N candidates, and the per-voxel
uncertainty's mean and its correlation with the error. ``--config RUN.yaml`` instead of ``--data``: the
run's held-out cases (``data.held_out``, e.g. OpenKBP ``validation/`` beside a synthetic ``test`` split;
:mod:`dosediffusion_training.data.sources`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dosediffusion import __version__
from dosediffusion.errors import InputError
from dosediffusion.io.gdp_hmm import write_gdp_hmm_npz
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_sidecar_case
from dosediffusion.program import run_command


def _convert(args: argparse.Namespace) -> int:
    case = load_case(args.path)
    out = Path(args.out)
    if out.suffix.lower() == ".npz":
        write_gdp_hmm_npz(case, out)
    else:
        if out.exists() and any(out.iterdir()):
            raise InputError("output folder is not empty", out)
        write_sidecar_case(case, out)
    print(f"{case.case_id}: wrote {out}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from dosediffusion_training.training.config import RunConfig
    from dosediffusion_training.training.memory_plan import plan

    found = plan(RunConfig.from_yaml(args.config), args.gpu_gib)
    print(json.dumps(found.to_dict(), indent=2) if args.json else found.table())
    return 0 if found.fits else 1


def _synth(args: argparse.Namespace) -> int:
    from dosediffusion_training.synth.generate import generate

    sites = tuple(site.strip() for site in args.sites.split(",") if site.strip())
    written, failed = generate(Path(args.out), args.n, args.seed, tuple(args.spacing), tuple(args.shape),
                               args.max_iterations, sites, args.concave_share)
    print(f"wrote {written} cases to {args.out}" + (f"; {failed} failed (see failures.log)" if failed else ""))
    return 1 if failed and not written else 0


def _split(args: argparse.Namespace) -> int:
    import json

    from dosediffusion_training.data.dataset import list_cases, make_split

    split = make_split(list_cases(args.data), tuple(args.fractions), args.seed)
    Path(args.out).write_text(json.dumps(split, indent=2))
    print(f"{args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    return 0


def _cache_latents(args: argparse.Namespace) -> int:
    import torch

    from dosediffusion_training.data.latent_cache import build_latent_cache
    from dosediffusion_training.training.config import RunConfig
    from dosediffusion_training.training.loop import build_codec, training_cases

    config = RunConfig.from_yaml(args.config)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = training_cases(config)  # bad data sources before the codec is built
    done = build_latent_cache(config, build_codec(config), paths, args.out, args.shard_gib, args.batch_size, device)
    print(f"{args.out}: {done['cases']} cases ({done['encoded']} encoded now) in {done['shards']} shards, "
          f"{done['bytes'] / 2**30:.2f} GiB")
    return 0


def _fit_codec(args: argparse.Namespace) -> int:
    from dosediffusion_training.training.codec_training import CodecConfig, fit_codec

    folder = fit_codec(CodecConfig.from_yaml(args.config), args.out)
    errors = json.loads((folder.parent / "reconstruction.json").read_text())["mae"]
    print(f"wrote {folder}; reconstruction MAE " + ", ".join(f"{k} {v:g}" for k, v in errors.items()))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from dosediffusion_training.training.config import RunConfig
    from dosediffusion_training.training.loop import train

    config = RunConfig.from_yaml(args.config)
    if config.train.stage == "C":
        from dosediffusion_training.training.scardnft import train_scardnft as train
    folder = train(config, args.out, resume=not args.no_resume)
    print(f"wrote {folder}")
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    from dosediffusion_training.training.lora import merge_into_pipeline

    print(f"wrote {merge_into_pipeline(args.pipeline, args.adapter, args.out)}")
    return 0


def model_label(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` → (NAME, DIR); a bare DIR is named after its folder, or after its run folder when it is
    a run's ``pipeline/`` (``runs/demo/pipeline`` → ``demo``)."""
    if "=" in spec:
        name, folder = spec.split("=", 1)
        return name, folder
    path = Path(spec)
    return (path.parent.name if path.name == "pipeline" and path.parent.name else path.name) or spec, spec


def evaluation_cases(args: argparse.Namespace) -> tuple[list[Path], dict[str, str]]:
    """The cases ``evaluate`` scores: ``--data`` (``--split`` of ``--split-file``, default test), or the
    held-out cases of the run configuration ``--config``; and the dose rule of each held-out case whose
    source names one (``dose: d97_rx``: its reference scaled as the run trained on it)."""
    from dosediffusion_training.data.dataset import list_cases
    from dosediffusion_training.data.sources import dose_rules, held_out_cases
    from dosediffusion_training.training.config import RunConfig

    if args.data is not None:
        if args.split and not args.split_file:
            raise InputError("--split names a part of a --split-file; give the split file, or leave out --split")
        return list_cases(args.data, args.split_file, (args.split or "test") if args.split_file else None), {}
    if args.split_file or args.split:
        raise InputError("--split-file and --split go with --data; with --config the run's data.held_out "
                         "names the held-out cases")
    data = RunConfig.from_yaml(args.config).data
    paths = held_out_cases(data)
    if not paths:
        raise InputError("the run has no held-out cases: give it data.held_out (or a split_file with val and test)",
                         args.config)
    return paths, dose_rules(data)


def _evaluate(args: argparse.Namespace) -> int:
    from dosediffusion.model.limits import check_sampling_options
    from dosediffusion_training.evaluation import evaluate_model, write_report

    check_sampling_options(args.steps, args.candidates)
    paths, rules = evaluation_cases(args)
    paths = paths[: args.max_cases]
    models = dict(model_label(m) for m in args.model)
    if len(models) < len(args.model):
        raise InputError("two --model entries have the same name: give them names as NAME=DIR")
    results = {name: evaluate_model(folder, paths, args.steps, args.seed, args.scorecard, args.device, args.candidates,
                                    rules)
               for name, folder in models.items()}
    summary = write_report(Path(args.out), results)
    print((Path(args.out) / "table.md").read_text(), end="")
    for pair, tests in summary["paired_tests"].items():
        print(pair + ": " + "; ".join(f"{k} Δ {v['mean_difference']:.3f} (t-test p {v['t_p']}, Wilcoxon p {v['wilcoxon_p']})"
                                      for k, v in tests.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dosediffusion-train", description="DoseDiffusion training and data preparation.")
    parser.add_argument("--version", action="version", version=f"dosediffusion-train {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser("convert", help="convert a case to a GDP-HMM .npz or a NRRD + case.json folder")
    convert.add_argument("path", help="DICOM RT folder, case JSON sidecar or GDP-HMM .npz")
    convert.add_argument("--out", required=True, help="an .npz file, or a folder for NRRD volumes + case.json")
    convert.set_defaults(run=_convert)
    synth = commands.add_parser("synth", help="synthetic phantoms with pyRadPlan IMRT doses (DICOM RT + compact)")
    synth.add_argument("--out", required=True, help="output folder (resumable)")
    synth.add_argument("--n", type=int, required=True, help="number of cases")
    synth.add_argument("--seed", type=int, default=0, help="seed of the first case (case i uses seed + i)")
    synth.add_argument("--spacing", type=float, nargs=3, default=(5.0, 5.0, 5.0), metavar=("X", "Y", "Z"),
                       help="voxel spacing in mm (default 5 5 5)")
    synth.add_argument("--shape", type=int, nargs=3, default=(36, 56, 72), metavar=("Z", "Y", "X"),
                       help="grid shape in voxels (default 36 56 72)")
    synth.add_argument("--max-iterations", type=int, default=300, help="fluence optimisation iterations")
    synth.add_argument("--sites", default="thorax,head_neck,pelvis",
                       help="comma-separated sites, taking turns by seed (default thorax,head_neck,pelvis)")
    synth.add_argument("--concave-share", type=float, default=0.3,
                       help="share of cases whose high PTV wraps an organ at risk (default 0.3)")
    synth.set_defaults(run=_synth)
    split = commands.add_parser("split", help="a seeded train/val/test split of a data folder")
    split.add_argument("data", help="folder of cases (compact files, DICOM folders, ...)")
    split.add_argument("--out", required=True, help="the split JSON to write")
    split.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(run=_split)
    evaluate = commands.add_parser("evaluate", help="evaluate models on held-out cases (CSV, JSON, markdown)")
    evaluate.add_argument("--model", action="append", required=True,
                          help="[NAME=]pipeline folder, or 'demo' (repeatable; the first is the reference of the paired tests)")
    cases = evaluate.add_mutually_exclusive_group(required=True)
    cases.add_argument("--data", help="folder of cases")
    cases.add_argument("--config", help="run configuration: evaluate on its held-out cases (data.held_out)")
    evaluate.add_argument("--split-file", help="split JSON (see 'split'), with --data")
    evaluate.add_argument("--split", help="part of the split file, with --data (default test)")
    evaluate.add_argument("--out", required=True, help="folder for cases.csv, summary.json, table.md")
    evaluate.add_argument("--steps", type=int, default=10)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--scorecard", help="template for every case (default: the shipped one that fits each case)")
    evaluate.add_argument("--max-cases", type=int, default=None)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--candidates", type=int, default=1,
                          help="best-of-N by the scorecard, 1-16 (default 1); N >= 2 adds the uncertainty columns")
    evaluate.set_defaults(run=_evaluate)
    cache = commands.add_parser("cache-latents", help="encode a run's training cases once into a latent cache")
    cache.add_argument("--config", required=True, help="run configuration (see DoseDiffusionTraining/configs/)")
    cache.add_argument("--out", required=True, help="cache folder (resumable); give it to the run as data.latent_cache")
    cache.add_argument("--shard-gib", type=float, default=1.0, help="size at which a shard file closes (default 1 GiB)")
    cache.add_argument("--batch-size", type=int, default=8, help="volumes encoded at a time (default 8)")
    cache.add_argument("--device", help="where the codec runs (default: cuda when available, else cpu)")
    cache.set_defaults(run=_cache_latents)
    codec = commands.add_parser("fit-codec", help="train a small VAE codec for the modalities (then frozen)")
    codec.add_argument("--config", required=True, help="codec configuration (see DoseDiffusionTraining/configs/)")
    codec.add_argument("--out", required=True, help="new folder (or a stopped run's, to resume): vae/, loss.jsonl, "
                       "reconstruction.json")
    codec.set_defaults(run=_fit_codec)
    fit = commands.add_parser("fit", help="train a model from a run configuration (YAML)")
    fit.add_argument("--config", required=True, help="run configuration (see DoseDiffusionTraining/configs/)")
    fit.add_argument("--out", required=True, help="run folder: checkpoints, loss log, and the final pipeline/")
    fit.add_argument("--no-resume", action="store_true", help="start afresh even if checkpoints exist")
    fit.set_defaults(run=_fit)
    planner = commands.add_parser("plan", help="memory per GPU of a run configuration, and whether it fits")
    planner.add_argument("--config", required=True, help="run configuration (see DoseDiffusionTraining/configs/)")
    planner.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    planner.add_argument("--json", action="store_true", help="print JSON")
    planner.set_defaults(run=_plan)
    merge = commands.add_parser("merge-lora", help="merge a stage C adapter into a pipeline folder")
    merge.add_argument("--pipeline", required=True, help="the pipeline folder the adapter was trained on")
    merge.add_argument("--adapter", required=True, help="the adapter folder (a stage C run's adapter/)")
    merge.add_argument("--out", required=True, help="the merged pipeline folder to write")
    merge.set_defaults(run=_merge_lora)
    args = parser.parse_args(argv)
    return run_command("dosediffusion-train", args)


if __name__ == "__main__":
    sys.exit(main())
