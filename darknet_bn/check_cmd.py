"""Check a converted model (ONNX, torch state_dict) against Darknet's inference, per layer.

Pairs the cfg's batchnorm-carrying layers (in cfg order) with the model's
BatchNormalization nodes / BatchNorm modules, or with its convolutions where
the batchnorm was folded in, runs both on probe inputs that exercise every
channel, and prints one row per layer: the largest error relative to the size
of the terms (tolerance: 8 float32 unit roundoffs), the largest distance in
float32 ulps, and for a failing layer the most likely converter mistake (eps
value or placement, swapped blocks, variance stored as a std or biased, raw
weights where folded ones were expected or the reverse, the other fork) with
its fix.  The reference is what the fork computes at inference: AlexeyAB the
folded conv (fuse_conv_batchnorm) for [convolutional] and normalize_cpu for
[batchnorm] and [connected]; pjreddie (x - mean)/(sqrt(var) + .000001f)
everywhere.  Details: docs/converters.md.

Exit status: 0 when every layer is within the tolerance, 1 when some layer is
not, 2 for an unreadable file or a model that cannot be paired with the cfg (one
line on stderr).
"""
import sys

from .darknet.check import check_model

HELP = "compare a converted model (ONNX, torch state_dict) with Darknet's BN inference"


def add_arguments(p):
    p.add_argument("cfg", help="Darknet .cfg file")
    p.add_argument("weights", help="matching .weights file")
    p.add_argument("converted", help="the converted model: .onnx, or a torch state_dict "
                                     "(.pt/.pth)")
    p.add_argument("--dialect", default="pjreddie", choices=("pjreddie", "alexeyab"),
                   help="the Darknet fork whose inference is the reference (default: "
                        "pjreddie)")
    p.add_argument("--eps", type=float, default=None,
                   help="the eps the state_dict's model is built with (a state_dict stores "
                        "none; PyTorch's default is 1e-5); not for ONNX, which stores it")


def run(args):
    try:
        report = check_model(args.converted, args.cfg, args.weights, dialect=args.dialect,
                             eps=args.eps)
    except (ValueError, TypeError, OSError) as e:
        print(f"darknet-bn check: {e}", file=sys.stderr)
        return 2
    print(f"{report.source} against {args.cfg} + {args.weights} ({report.dialect})")
    print("\n".join(report.format_table()))
    return 0 if report.ok else 1
