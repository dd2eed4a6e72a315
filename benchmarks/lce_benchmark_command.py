"""Print the `lce_benchmark_model` commands that time a flatbuffer on a Raspberry Pi or an
Android phone (LCE's benchmark binary; build it from larq-compute-engine's repository with
`bazel build -c opt --config=aarch64 //larq_compute_engine/tflite/benchmark:lce_benchmark_model`
or download it from LCE's GitHub releases).

Usage: python benchmarks/lce_benchmark_command.py MODEL.tflite [--threads 1 4]
"""

import argparse
import os


def commands(model_path, threads=(1, 4), runs=100):
    name = os.path.basename(model_path)
    out = []
    for t in threads:
        out.append(
            "# Raspberry Pi 4 / any 64-bit ARM Linux board:\n"
            f"scp {model_path} pi@raspberrypi.local:~/\n"
            f"ssh pi@raspberrypi.local ./lce_benchmark_model --graph=$HOME/{name} "
            f"--num_threads={t} --num_runs={runs} --warmup_runs=10"
        )
        out.append(
            "# Android phone over adb:\n"
            f"adb push lce_benchmark_model {model_path} /data/local/tmp/\n"
            "adb shell chmod +x /data/local/tmp/lce_benchmark_model\n"
            f"adb shell /data/local/tmp/lce_benchmark_model --graph=/data/local/tmp/{name} "
            f"--num_threads={t} --num_runs={runs} --warmup_runs=10"
        )
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an LCE .tflite flatbuffer")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    p.add_argument("--runs", type=int, default=100)
    args = p.parse_args(argv)
    print("\n\n".join(commands(args.model, args.threads, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
