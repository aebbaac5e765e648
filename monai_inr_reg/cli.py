"""Command line: ``monai-inr-reg register | batch | apply | presets | demo | bench``.

``register`` writes exactly what the bundle writes for one pair (``OUT/<pair id>/`` plus
``OUT/metrics.csv`` / ``metrics.json``); ``batch`` runs a datalist through the same
:func:`monai_inr_reg.pipeline.run_datalist` that ``bundle/configs/inference.yaml`` calls.

Adding a subcommand: write ``configure(parser)`` and ``run(args) -> int`` and append a
:class:`Subcommand` to ``SUBCOMMANDS``; a module with its own parser (``main(argv) -> int``) is
one line in ``PASSTHROUGH``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["main", "parse_set", "Subcommand", "SUBCOMMANDS", "PASSTHROUGH"]

EXIT_OK, EXIT_FAILED_PAIRS, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def parse_set(items: list[str] | None) -> dict:
    """``["a.b=1", "motion=affine"]`` -> ``{"a": {"b": 1}, "motion": "affine"}`` (values read as YAML).

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    import yaml

    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected key=value, got {item!r}")
        value = yaml.safe_load(text) if text.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set: {key!r} conflicts with another --set of {part!r}")
        node[parts[-1]] = value
    return out


def _common(parser: argparse.ArgumentParser) -> None:
    from .pipeline.writers import DEFAULT_OUTPUTS, OUTPUTS

    parser.add_argument("-o", "--output-dir", required=True, type=Path, help="output folder (one sub-folder per pair)")
    parser.add_argument("--preset", default="deformable",
                        help="rigid | affine | deformable | multimodal-rigid | multimodal-deformable | a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a preset option (dotted keys for nested ones), e.g. --set iterations_scale=0.5")
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and point sampling (default 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:1")
    parser.add_argument("--no-itk", dest="itk", action="store_false", help="do not write ITK / ANTs transform files")
    parser.add_argument("--outputs", metavar="NAMES",
                        help=f"what each pair writes, comma-separated, from {','.join(OUTPUTS)} "
                             f"(default {','.join(DEFAULT_OUTPUTS)}; ddf: the MONAI field, tfm: ITK text, ants: ANTs "
                             f"warp + .mat, inverse: inverse transforms, jacobian: determinant map)")
    parser.add_argument("--labels", metavar="IDS",
                        help="label ids that Dice / HD95 average over: 2,3,4 or a file of ids (default: every label)")


def _configure_register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixed", help="fixed image file (NIfTI, MHA, NRRD, PNG, ...)")
    parser.add_argument("moving", help="moving image file")
    parser.add_argument("--fixed-label", help="fixed label map (for Dice / HD95)")
    parser.add_argument("--moving-label", help="moving label map (warped with nearest; Dice / HD95 with --fixed-label)")
    parser.add_argument("--fixed-mask", help="mask on the fixed grid (nonzero = inside): only fixed voxels inside count, "
                                             "as ANTs' -x")
    parser.add_argument("--moving-mask", help="mask on the moving grid: only points mapped inside it count")
    parser.add_argument("--initial-transform", help="start from this linear transform instead of the centres of mass: "
                                                    "ITK .h5 / .tfm or ANTs .mat (fixed -> moving, as "
                                                    "antsApplyTransforms uses it)")
    parser.add_argument("--id", dest="pair_id", help="name of the pair's output folder (default <moving>_to_<fixed>)")
    _common(parser)


def _configure_batch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datalist", help='datalist JSON: {"pairs": [{"fixed", "moving", "fixed_label"?, "moving_label"?}]}')
    parser.add_argument("--dataset-dir", help="base folder of relative paths (default: the datalist's folder)")
    parser.add_argument("--distributed", action="store_true",
                        help="shard the pairs over the ranks of a torchrun launch (torch.distributed)")
    _common(parser)


def _run_datalist(args, datalist, dataset_dir=None, distributed=False) -> int:
    from .pipeline import PairFailures, run_datalist

    try:
        run_datalist(datalist, args.output_dir, dataset_dir=dataset_dir, preset=args.preset,
                     overrides=parse_set(args.overrides), device=args.device, seed=args.seed, itk=args.itk,
                     distributed=distributed, outputs=args.outputs, labels=args.labels,
                     progress=False if args.quiet else "auto")
    except PairFailures as err:
        print(f"monai-inr-reg: {err}", file=sys.stderr)
        return EXIT_FAILED_PAIRS
    except (ValueError, FileNotFoundError) as err:  # bad preset / option / datalist: nothing was done
        print(f"monai-inr-reg: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"monai-inr-reg: outputs in {args.output_dir}; metrics in {Path(args.output_dir) / 'metrics.csv'}")
    return EXIT_OK


def _run_register(args) -> int:
    from .config import load_preset
    from .pipeline import check_pair
    from .pipeline.writers import check_outputs

    pair = {"fixed": str(Path(args.fixed).absolute()), "moving": str(Path(args.moving).absolute())}
    for key in ("fixed_label", "moving_label", "fixed_mask", "moving_mask", "initial_transform"):
        if getattr(args, key):
            pair[key] = str(Path(getattr(args, key)).absolute())
    if args.pair_id:
        pair["id"] = args.pair_id
    try:  # one pair: a bad input is a usage error, found before anything is written
        overrides = parse_set(args.overrides)
        overrides.pop("progress", None)
        load_preset(args.preset, **overrides)
        check_outputs(args.outputs)
        check_pair(pair)
    except (ValueError, OSError) as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"monai-inr-reg: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return _run_datalist(args, {"pairs": [pair]})


def _run_batch(args) -> int:
    return _run_datalist(args, args.datalist, args.dataset_dir, args.distributed)


def _configure_apply(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transform", required=True,
                        help="a pair output folder of register / batch / the bundle (OUT/<pair id>), or its ddf.nii.gz")
    parser.add_argument("--input", required=True,
                        help="image on the moving grid to warp (any grid, through the affines)")
    parser.add_argument("--reference",
                        help="fixed image: checked against the field's grid; its header goes to the output")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output NIfTI file (.nii.gz or .nii)")
    parser.add_argument("--nearest", action="store_true",
                        help="labels: nearest-neighbour, stored with the smallest integer type (default: bilinear)")


def _run_apply(args) -> int:
    from .apply import apply_transform
    from .io import load_image
    from .pipeline import save_nifti

    try:
        if not args.output.name.lower().endswith((".nii.gz", ".nii")):
            raise ValueError(f"'-o' must be a NIfTI file name (.nii.gz or .nii), got {str(args.output)!r}")
        # loaded here so that errors name the command line's flags
        image = load_image(args.input, name="--input")
        reference = load_image(args.reference, name="--reference") if args.reference else None
        warped = apply_transform(args.transform, image, reference, mode="nearest" if args.nearest else "bilinear")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        save_nifti(args.output, warped.as_tensor(), warped.affine, label=args.nearest)
    except (ValueError, TypeError, OSError) as err:  # bad input or unwritable output: nothing is written
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"monai-inr-reg: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"monai-inr-reg: wrote {args.output}")
    return EXIT_OK


def _configure_presets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "show"), help="list the presets, or show one resolved")
    parser.add_argument("name", nargs="?", default="deformable", help="preset name or YAML file (for show)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="show the preset with these overrides merged in")


def _run_presets(args) -> int:
    from .config import describe_preset, list_presets

    try:
        if args.action == "list":
            print("\n".join(list_presets()))
        else:
            print(describe_preset(args.name, **parse_set(args.overrides)), end="")
    except (ValueError, OSError) as err:
        print(f"monai-inr-reg: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("register", "register one pair (same outputs as one bundle pair)", _configure_register, _run_register),
    Subcommand("batch", "register every pair of a datalist (what the bundle runs)", _configure_batch, _run_batch),
    Subcommand("apply", "warp an image with a saved transform (as antsApplyTransforms)", _configure_apply, _run_apply),
    Subcommand("presets", "list the presets, or show one with every option, its default and unit", _configure_presets,
               _run_presets),
]

# name -> (module with main(argv: list[str]) -> int, help); the module parses its own arguments
PASSTHROUGH: dict[str, tuple[str, str]] = {
    "demo": ("monai_inr_reg.demo", "run the demo (see monai-inr-reg demo --help)"),
    "bench": ("monai_inr_reg.bench", "run the benchmarks (see monai-inr-reg bench --help)"),
}


def _version() -> str:
    from . import __version__

    return __version__


def _set_threads(options: list[str]) -> None:
    """Apply ``--threads N`` from the options before a command (torch's intra-op threads)."""
    if "--threads" in options and options.index("--threads") + 1 < len(options):
        import torch

        torch.set_num_threads(max(1, int(options[options.index("--threads") + 1])))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-inr-reg",
                                     description="Image registration with untrained hash-grid coordinate networks.")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only, no progress bars")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads torch may use (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        command.configure(sub.add_parser(command.name, help=command.help, description=command.help))
    for name, (_, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``monai-inr-reg``; returns the exit status (0 ok, 1 some pairs failed, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # passthrough commands hand everything after their name to their own parser
    first = next((i for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "--threads")),
                 None)
    if first is not None and argv[first] in PASSTHROUGH:
        logging.basicConfig(level=logging.WARNING if "-q" in argv[:first] or "--quiet" in argv[:first] else logging.INFO,
                            format="%(message)s")
        _set_threads(argv[:first])
        name = PASSTHROUGH[argv[first]][0]
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            print(f"monai-inr-reg: error: '{argv[first]}' is not available in this installation ({name} is missing)",
                  file=sys.stderr)
            return EXIT_USAGE
        return int(module.main(argv[first + 1:]) or 0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.threads is not None:
        if args.threads < 1:
            print(f"monai-inr-reg: error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            return EXIT_USAGE
        _set_threads(["--threads", str(args.threads)])
    command = next(c for c in SUBCOMMANDS if c.name == args.command)
    return command.run(args)


if __name__ == "__main__":
    sys.exit(main())
