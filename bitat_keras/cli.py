"""The `bitat-keras` command: `demo` and `convert`."""

import sys

USAGE = """usage: bitat-keras {demo,convert} [options]

  demo      train a full-precision net on Fashion-MNIST, binarize it with BiTAT,
            convert it with larq-compute-engine and check parity (see --help)
  convert   MODEL.keras -o MODEL.tflite: LCE conversion, parity check and op report
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from bitat_keras.demo import main as demo

        return demo(rest)
    if command == "convert":
        from bitat_keras.converter import main as convert

        return convert(rest, prog="bitat-keras convert")
    print(
        f"bitat-keras: unknown command {command!r}. Expected 'demo' or 'convert'.\n{USAGE}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
