"""``unicornn export RUN --format onnx|pt2 [--out FILE]``: a trained run's best model as an ONNX file or a
``torch.export`` program, verified against PyTorch on the run's own validation batch."""

from __future__ import annotations

from .options import CLIError, add_data_dir


def run(args) -> int:
    from ..export import export_run

    try:
        path, diff = export_run(args.run, args.format, args.out, data_dir=args.data_dir)
    except ValueError as err:  # an output name that does not fit the format, a model that cannot be exported
        raise CLIError(str(err)) from None
    print(f"exported {args.run} to {path} ({args.format}, dynamic batch size and sequence length)")
    print(f"verified on the run's first validation batch: largest difference from PyTorch {diff:.3g}")
    return 0


def add_parser(sub) -> None:
    from ..export import FORMATS

    ex = sub.add_parser(
        "export",
        help="export a trained run's best model to ONNX or a torch.export program (.pt2)",
        description="Rebuild RUN's best model (best.pt) for inference, export it with its task's input shape "
        "and a dynamic batch size and sequence length, run the file on the run's first validation batch and "
        "print its largest difference from PyTorch. onnx: runs on onnxruntime alone (the recurrence is one "
        "ONNX Scan per layer); pt2: torch.export.load, with this package imported for its fused kernels.",
    )
    ex.add_argument("run", metavar="RUN", help="run directory (holding best.pt)")
    ex.add_argument("--format", required=True, choices=FORMATS, help="onnx or pt2")
    ex.add_argument("--out", metavar="FILE", help="output file (default RUN/model.onnx or RUN/model.pt2)")
    add_data_dir(ex)
    ex.set_defaults(func=run)
