"""Check a converted model (ONNX, TFLite, OpenVINO IR, torch state_dict) against
Darknet's inference, per layer.

MODEL: an ONNX file (float32/float16/bfloat16, or int8 from
onnxruntime.quantization: QDQ, QLinearConv, ConvInteger), a TFLite file (float32,
float16, full-integer or dynamic-range int8; the tflite extra), an OpenVINO IR
.xml with its .bin beside it (FP32 or FP16-compressed; the openvino extra) or a
torch state_dict.  Pairs the cfg's layers with the model's (graphs: by the
data-flow graph from the model input; state_dicts: by names carrying cfg indices,
order and shapes), runs the batchnorm-carrying ones on probe inputs that
exercise every channel, compares every conv weight, and prints one row per layer
(80 columns): the largest error relative to the size of the terms (tolerance: 8
unit roundoffs of the precision the model stores: float32, float16 or bfloat16;
int8 parameters: each within half its quantization step, the error in units of
that), the largest distance in ulps (int8: steps), and for a failing layer a
note number.  Under the table, what int8 cannot see (activation quantization is
not judged), then each note once, with the layers it covers: the most likely converter mistake (eps
value or placement, swapped blocks, variance stored as a std or biased, raw
weights where folded ones were expected or the reverse, the other fork, a
transposed or flipped kernel) and its fix.  A cfg layer missing from the model
is a failing row; a model unit not in the cfg is listed (failing when its
output feeds a paired layer).  The reference is what the fork computes at
inference: AlexeyAB the folded conv (fuse_conv_batchnorm) for [convolutional]
and normalize_cpu for [batchnorm] and [connected]; pjreddie (x - mean)/(sqrt(var)
+ .000001f) everywhere.  Details: docs/converters.md in darknet_bn's source (the
repository and the sdist).

Exit status: 0 when every layer is within the tolerance, 1 when some layer is
not, 2 for an unreadable file (a truncated .tflite, an .xml without its .bin or
with a .bin of the wrong size, an operator the reader does not know...) or a
model none of whose layers pair with the cfg
(one line on stderr).
"""
from ._cmd import (CFG_FILE, MODEL_FILE, WEIGHTS_FILE, add_dialect_argument,
                   add_file_arguments, check_files, fail)
from .darknet.check import check_model

HELP = ("compare a converted model (ONNX, TFLite, OpenVINO IR, torch state_dict) with "
        "Darknet's BN inference")
FILES = (CFG_FILE, WEIGHTS_FILE, MODEL_FILE)


def add_arguments(p):
    add_file_arguments(p, FILES)
    add_dialect_argument(p, "the Darknet fork whose inference is the reference")
    p.add_argument("--eps", type=float, default=None,
                   help="the eps the state_dict's model is built with (a state_dict stores "
                        "none; PyTorch's default is 1e-5); not for ONNX, which stores it")
    p.add_argument("--strict", action="store_true",
                   help="no value-based choice between same-shaped candidate layers: an "
                        "ambiguous pairing is an error naming the candidates")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON instead of a table (same exit status)")


def run(args):
    try:
        check_files(args, FILES)
        report = check_model(args.converted, args.cfg, args.weights, dialect=args.dialect,
                             eps=args.eps, strict=args.strict)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as e:
        return fail("check", e)
    if args.json:
        print(report.to_json(indent=1))
    else:
        print(f"{report.source} against {args.cfg} + {args.weights} ({report.dialect})")
        print("\n".join(report.format_table()))
    return 0 if report.ok else 1
