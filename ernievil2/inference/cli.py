"""Command-line options shared by the inference tools (``tools/infer.py``, ``build_index.py``, ``serve.py``)."""
from .predictor import PRECISIONS, PredictorOptions


def add_predictor_arguments(parser):
    group = parser.add_argument_group("predictor")
    group.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    group.add_argument("--threads", type=int, default=PredictorOptions.cpu_threads, help="CPU math threads")
    group.add_argument("--no-onednn", action="store_true", help="CPU: plain kernels instead of oneDNN")
    group.add_argument("--gpu-id", type=int, default=0)
    group.add_argument("--tensorrt", action="store_true", help="GPU: TensorRT subgraph engine (untested here)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help="TensorRT precision (GPU); the export's own precision (bf16, int8) comes from its deploy.yaml")
    group.add_argument("--max-len", type=int, default=None, help="text length in tokens (default: the export's)")
    return group


def predictor_options(args):
    return PredictorOptions(
        device=args.device,
        cpu_threads=args.threads,
        onednn=not args.no_onednn,
        gpu_id=args.gpu_id,
        tensorrt=args.tensorrt,
        precision=args.precision,
    )
