"""``unicornn bench speed|memory|streaming|onnx``: the paper's efficiency claims, and inference (streaming
steps, an exported ONNX model), measured side by side in one process."""

from __future__ import annotations

import sys

from . import EXIT_FAILED
from .common import written
from .options import (
    CLIError,
    add_device,
    add_out,
    add_threads,
    comma_ints,
    comma_names,
    nonnegative_int,
    positive_int,
)


def run_speed(args) -> int:
    from ..bench.speed import (
        CPU_SETTING,
        DEFAULT_SPEED_MODELS,
        PAPER_SETTING,
        format_table,
        run_speed,
        write_speed,
    )
    from ..training.distributed import resolve_device
    from ..training.progress import line_logger

    device = str(resolve_device(args.device))  # auto -> cuda:0 or cpu
    size = dict(PAPER_SETTING if args.paper else CPU_SETTING)
    for key in ("lengths", "batch", "hidden", "layers"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    try:
        result = run_speed(
            size["lengths"], args.models or DEFAULT_SPEED_MODELS, size["batch"], size["hidden"], size["layers"],
            size["input_size"], device, args.repeats, args.slow_repeats, args.warmup,
            threads=args.threads, flush_denormal=args.flush_denormal, floor=args.floor, log=line_logger(),
        )  # fmt: skip
    except ValueError as err:
        raise CLIError(str(err)) from None
    paths = write_speed(result, args.out)
    print(format_table(result))
    print(written(paths))
    return 0


def run_memory(args) -> int:
    from ..bench.memory import DEFAULTS, MEMORY_MODELS, format_table, run_memory, write_memory
    from ..training.distributed import resolve_device
    from ..training.progress import line_logger

    device = str(resolve_device(args.device))  # auto -> cuda:0 or cpu
    try:
        result = run_memory(
            args.lengths, args.models or MEMORY_MODELS, device, args.batch or DEFAULTS["batch"],
            args.hidden or DEFAULTS["hidden"], args.layers or DEFAULTS["layers"],
            checkpoint_every=args.checkpoint_every, repeats=args.repeats, threads=args.threads, log=line_logger(),
        )  # fmt: skip
    except ValueError as err:
        raise CLIError(str(err)) from None
    paths = write_memory(result, args.out)
    print(format_table(result))
    failed = [r for r in result["rows"] if "error" in r]
    for r in failed:
        print(f"{r['model']} N={r['N']} failed: {r['error'].strip().splitlines()[-1]}", file=sys.stderr)
    print(written(paths))
    return EXIT_FAILED if failed else 0


def run_streaming(args) -> int:
    from ..bench.streaming import format_streaming_table, run_streaming, write_streaming

    result = run_streaming(
        hidden=args.hidden or 128, layers=args.layers or 2, batch=args.batch or 1, steps=args.steps,
        chunk_sizes=args.chunks, stream_length=args.stream_length, rounds=args.repeats, threads=args.threads,
    )  # fmt: skip
    paths = write_streaming(result, args.out)
    print(format_streaming_table(result))
    print(written(paths))
    return 0


def run_onnx(args) -> int:
    from ..bench.deployment import format_onnx_table, run_onnx_speed, write_onnx_speed

    result = run_onnx_speed(N=args.length, batch=args.batch or 32, hidden=args.hidden or 128,
                            layers=args.layers or 2, rounds=args.repeats, threads=args.threads)  # fmt: skip
    paths = write_onnx_speed(result, args.out)
    print(format_onnx_table(result))
    print(written(paths))
    return 0


def _add_sizes(p) -> None:
    p.add_argument("--batch", type=positive_int, metavar="B")
    p.add_argument("--hidden", type=positive_int, metavar="H")
    p.add_argument("--layers", type=positive_int, metavar="L")


def add_parser(sub) -> None:
    be = sub.add_parser(
        "bench",
        help="benchmarks: speed (Fig. 2), training memory (Sec. 2.3), streaming steps, ONNX inference",
        description="Measure, side by side in one process, what the paper claims about speed and memory, and "
        "the cost of inference (streaming steps, an exported ONNX model). Each writes a table (.txt) and JSON "
        "(speed and memory also a PNG) into --out.",
    )
    bsub = be.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    sp = bsub.add_parser(
        "speed",
        help="forward+backward time against N: UnICORNN against LSTM, GRU, coRNN, IndRNN (Fig. 2)",
        description="Time one training step (forward, cross-entropy on the last step, backward) of every "
        "model at every length, repeats interleaved, medians; load average recorded. Default sizes suit a "
        "CPU (B=32, hidden 128, 2 layers, N=1000,2000); --paper uses the paper's (B=128, hidden 256).",
    )
    sp.add_argument("--lengths", type=comma_ints, metavar="N,N", help="sequence lengths (default 1000,2000)")
    sp.add_argument(
        "--models",
        type=comma_names,
        metavar="M,M",
        help="unicornn, unicornn_final (head on the final state y_n), unicornn_reference, lstm, gru, cornn, "
        "indrnn, torchrecurrent (each optionally NAME:L for L layers, e.g. lstm:1); default "
        "unicornn,lstm,gru,cornn,indrnn,torchrecurrent",
    )
    sp.add_argument("--paper", action="store_true", help="the paper's sizes: B=128, hidden 256, 2 layers")
    _add_sizes(sp)
    add_device(sp, "cpu", help="cpu, cuda[:i] or auto (default cpu)")
    sp.add_argument("--repeats", type=positive_int, default=5, help="timed rounds (default 5)")
    sp.add_argument("--slow-repeats", type=positive_int, default=2,
                    help="timed rounds of per-step models (default 2)")  # fmt: skip
    sp.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed rounds first (default 1)")
    add_threads(sp, help="torch threads (default torch's choice)")
    sp.add_argument(
        "--flush-denormal", action="store_true", help="flush subnormal floats on CPU (LSTM/GRU run faster)"
    )
    sp.add_argument(
        "--floor",
        action="store_true",
        help="add the floor of a fused step (timed matmuls + one memory pass per tensor the kernels touch)",
    )
    add_out(sp, "claims")
    sp.set_defaults(func=run_speed)
    me = bsub.add_parser(
        "memory",
        help="peak training memory against N: UnICORNN standard and lean against an LSTM (Sec. 2.3)",
        description="Peak memory of one training step per model and length. CPU: every point in a fresh "
        "Python process, peak resident memory minus resident memory after a warm-up; CUDA: "
        "max_memory_allocated. Default: B=16, hidden 128, 3 layers, 6 input channels. Exit status 1 when a "
        "point failed (its error is in the JSON).",
    )
    me.add_argument("--lengths", type=comma_ints, default=[500, 1000, 2000, 4000], metavar="N,N")
    me.add_argument(
        "--models",
        type=comma_names,
        metavar="M,M",
        help="unicornn_standard, unicornn_lean, lstm (default all)",
    )
    _add_sizes(me)
    me.add_argument("--checkpoint-every", type=positive_int, default=2048, metavar="K",
                    help="lean mode's anchor spacing")  # fmt: skip
    add_device(me, "cpu", help="cpu, cuda[:i] or auto (default cpu)")
    me.add_argument("--repeats", type=positive_int, default=1, help="timed steps per point (default 1)")
    add_threads(me, help="torch threads per measurement")
    add_out(me, "claims")
    me.set_defaults(func=run_memory)
    st = bsub.add_parser(
        "streaming",
        help="streaming inference on CPU: UnICORNN.step against LSTMCell/GRUCell stacks, chunked throughput",
        description="Per-step latency of a stack advanced one step at a time (UnICORNN.step, stacks of "
        "nn.LSTMCell and nn.GRUCell, one-step chunks through forward) and the throughput of a stream fed "
        "in chunks with the state carried (UnICORNN on its fused kernels, nn.LSTM), under inference_mode, "
        "rounds interleaved, medians. Default: B=1, hidden 128, 2 layers.",
    )
    _add_sizes(st)
    st.add_argument(
        "--steps", type=positive_int, default=2000, help="steps per timed latency run (default 2000)"
    )
    st.add_argument("--chunks", type=comma_ints, default=[1, 16, 256], metavar="C,C",
                    help="chunk sizes of the throughput runs (default 1,16,256)")  # fmt: skip
    st.add_argument("--stream-length", type=positive_int, default=4096, metavar="N",
                    help="steps of the streamed sequence (default 4096)")  # fmt: skip
    st.add_argument("--repeats", type=positive_int, default=7, help="timed rounds (default 7)")
    add_threads(st, help="torch threads (default torch's choice)")
    add_out(st, "claims")
    st.set_defaults(func=run_streaming)
    on = bsub.add_parser(
        "onnx",
        help="inference time of the exported ONNX model on onnxruntime against the package's CPU kernel",
        description="Export a UnICORNN sequence classifier to ONNX and time one forward pass on onnxruntime "
        "(CPU) beside the eager model on the fused CPU kernel. Default: N=1000, B=32, hidden 128, 2 layers.",
    )
    _add_sizes(on)
    on.add_argument(
        "--length", type=positive_int, default=1000, metavar="N", help="sequence length (default 1000)"
    )
    on.add_argument("--repeats", type=positive_int, default=5, help="timed rounds (default 5)")
    add_threads(on, help="torch threads (default torch's choice)")
    add_out(on, "claims")
    on.set_defaults(func=run_onnx)
