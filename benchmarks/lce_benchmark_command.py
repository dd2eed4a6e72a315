"""Print the `lce_benchmark_model` commands that time a flatbuffer on a Raspberry Pi or an
Android phone (LCE's benchmark binary; build it from larq-compute-engine's repository with
`bazel build -c opt --config=aarch64 //larq_compute_engine/tflite/benchmark:lce_benchmark_model`
or download it from LCE's GitHub releases).

Usage: python benchmarks/lce_benchmark_command.py MODEL.tflite [--threads 1 4]
"""

import argparse

from bitat_keras.export import lce_benchmark_commands as commands


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an LCE .tflite flatbuffer")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    print("\n\n".join(commands(args.model, args.threads, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
