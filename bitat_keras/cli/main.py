"""The `bitat-keras` command line: `demo` and `convert`, in one place.

``bitat-keras convert MODEL.keras -o MODEL.tflite`` (also
``python converters/keras_to_lce.py ...``): LCE conversion, an op report and a parity check.
Exit codes: 0 success; 1 conversion failed or the parity check did not match; 2 bad input
(missing file or output directory, a file that is not a Keras 3 model, a model that needs
``safe_mode=False``, layers LCE cannot convert exactly, or binary layers that stay float in
strict mode). Every failure prints one ``error: ...`` line and writes nothing: a file
already at the output path is left as it was.
"""

import argparse
import json
import sys

__all__ = ["convert", "convert_parser", "format_report", "main"]

USAGE = """usage: bitat-keras {demo,convert} [options]

  demo      train a full-precision net on Fashion-MNIST, binarize it with BiTAT,
            convert it with larq-compute-engine and check parity (see --help)
  convert   MODEL.keras -o MODEL.tflite: LCE conversion, parity check and op report
"""


DESCRIPTION = (
    "Convert a Keras 3 .keras model to a larq-compute-engine (LCE) .tflite flatbuffer, "
    "report its operators and check that it computes what the Keras model computes."
)


def convert_parser(prog=None):
    """The ``argparse`` parser of the converter.

    Args:
        prog: program name shown in usage messages (default: from ``sys.argv[0]``).

    Example:
        >>> args = convert_parser().parse_args(["m.keras", "-o", "m.tflite"])
    """
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("model", metavar="MODEL.keras", help="Keras 3 model file (.keras)")
    parser.add_argument(
        "-o", "--output", required=True, metavar="MODEL.tflite", help="LCE flatbuffer to write"
    )
    parser.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the parity check"
    )
    parser.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        help="only warn (instead of failing) when a BinaryConv2D stays float",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=8,
        metavar="N",
        help="random inputs for the parity check (default: 8)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--float-tflite",
        metavar="PATH",
        default=None,
        help="also write a plain float TFLite flatbuffer here (for size comparisons)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def format_report(report):
    """Human-readable text of a :func:`bitat_keras.export.convert_file` report.

    Args:
        report: the dict returned by ``convert_file``.

    Example:
        >>> print(format_report(convert_file("m.keras", "m.tflite")))
    """
    written = "" if report.get("written", True) else ", NOT WRITTEN"
    lines = [
        f"Converted {report['model_path']}",
        f"       -> {report['output_path']} ({report['size_bytes']:,} bytes, "
        f"{report['num_operators']} operators{written})",
    ]
    if report.get("float_size_bytes"):
        ratio = report["float_size_bytes"] / max(report["size_bytes"], 1)
        lines.append(
            f"Float TFLite -> {report['float_output_path']} ({report['float_size_bytes']:,} "
            f"bytes, {ratio:.1f}x the LCE file)"
        )
    width = max([len("operator")] + [len(name) for name in report["ops"]])
    lines += ["", f"{'operator':<{width}}  count", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {count:>5}" for name, count in report["ops"].items()]
    lines.append("")
    lines.append(
        f"Binary convolutions: {report['bconv']} LceBconv2d ops for "
        f"{report['binary_layers']} binary BinaryConv2D layers"
    )
    if report.get("parity_error"):
        lines.append(f"Parity check: not run: {report['parity_error']}")
    elif report.get("max_abs_diff") is None:
        lines.append("Parity check: skipped")
    else:
        verdict = "OK" if report["parity_ok"] else "MISMATCH"
        lines.append(
            f"Parity on {report['samples']} random inputs (seed {report['seed']}): "
            f"max |diff| = {report['max_abs_diff']:.3g}, relative to max |output| "
            f"({report['output_scale']:.3g}) = {report['relative_diff']:.3g} [{verdict}]"
        )
    return "\n".join(lines)


def _one_line(error):
    return " ".join(str(error).split())


def convert(argv=None, *, prog=None):
    """Run ``bitat-keras convert``: a ``.keras`` file to an LCE ``.tflite`` file.

    Args:
        argv: argument list without the program name (default: ``sys.argv[1:]``).
        prog: program name for usage messages (``bitat-keras convert`` passes its own).

    Returns:
        0 on success, 1 if conversion failed or the parity check did not match, 2 for bad
        input (missing file or directory, a file that is not a Keras 3 model, unsafe model,
        layers LCE cannot convert exactly, binary layers that stay float in strict mode, bad
        arguments). On failure nothing is written.

    Example:
        >>> convert(["bnn.keras", "-o", "bnn.tflite", "--samples", "4"])
        0
    """
    parser = convert_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help (0) and usage errors (2)
        return int(exit_.code or 0)

    from bitat_keras.export import convert_file

    try:
        report = convert_file(
            args.model,
            args.output,
            check=args.check,
            strict=args.strict,
            samples=args.samples,
            seed=args.seed,
            float_output_path=args.float_tflite,
        )
    except (FileNotFoundError, IsADirectoryError, TypeError, ValueError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: conversion failed: {_one_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. no permission to read the model or write the output
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1

    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if report.get("parity_ok") is False:
        print(
            f"error: the converted model differs from the Keras model (relative difference "
            f"{report['relative_diff']:.3g} > 1e-3); nothing was written to {args.output!r} "
            "(--no-check writes it without the check)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv=None):
    """The ``bitat-keras`` entry point: dispatch to ``demo`` or ``convert``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from bitat_keras.cli.demo import main as demo

        return demo(rest)
    if command == "convert":
        return convert(rest, prog="bitat-keras convert")
    print(
        f"bitat-keras: unknown command {command!r}. Expected 'demo' or 'convert'.\n{USAGE}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
