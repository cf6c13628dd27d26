"""Repair a converted model so that its batchnorms compute the fork's inference, in its
own format: OUT is a copy of MODEL with the same graph, precision and format, whose
paired layers hold the values Darknet's .weights give in the model's own form
(a BatchNormalization / BatchNorm2d with the fork's exact PyTorch form: pjreddie's
(x - mean)/(sqrt(var) + .000001f) as running_var = (sqrt(var) + 1e-6)^2 with eps 0;
Mul/Add constants; folded Conv/Gemm weights and biases by the fork's folding).
Misread layers get the right floats from WEIGHTS.

MODEL: an ONNX file (float32/float16 parameters, also behind Identity, Cast,
Reshape, Transpose...; int8 from onnxruntime.quantization), a TFLite file, an
OpenVINO IR .xml (OUT an .xml; its .bin is written beside it) or a torch
state_dict (--eps: the eps its model is built with; the variance then carries the
fork's denominator).  int8 weights are requantized with the stored scales; a scale
is never changed (values that do not fit: exit 1 naming the channels).  The report lists, per
layer, check's diagnosis before and each parameter's largest change.  After
writing, check runs on the repaired model: OUT is written only when every layer
passes.  Details: docs/converters.md, "Repairing a model".

Exit status: 0 when the repaired model passes check; 1 when the model cannot be
repaired in its own form (the reason on stderr; nothing written); 2 for bad input
(unreadable files, a model that does not pair, OUT equal to an input, an
unwritable OUT).
"""
import sys

from ._cmd import (CFG_FILE, MODEL_FILE, WEIGHTS_FILE, File, add_dialect_argument,
                   add_file_arguments, check_files, fail)
from .darknet.fix import FixError, fix_file
from .darknet.kinds import ONNX, OPENVINO, TFLITE, TORCH

HELP = "write a repaired copy of a converted model that reproduces Darknet's batchnorm"
OUT_MODEL = File("out", "OUT", (ONNX, TFLITE, OPENVINO, TORCH),
                 "the repaired model to write (not an input)", written=True)
FILES = (CFG_FILE, WEIGHTS_FILE, MODEL_FILE, OUT_MODEL)


def add_arguments(p):
    add_file_arguments(p, FILES)
    add_dialect_argument(p, "the Darknet fork whose inference the model must compute")
    p.add_argument("--eps", type=float, default=None,
                   help="the eps the state_dict's model is built with (a state_dict stores "
                        "none); not for ONNX, which stores it")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would change; write nothing")


def run(args):
    try:
        check_files(args, FILES)
        report = fix_file(args.cfg, args.weights, args.converted, args.out,
                          dialect=args.dialect, eps=args.eps, dry_run=args.dry_run)
    except FixError as e:
        print(f"darknet-bn fix: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as e:
        return fail("fix", e)
    print(f"{report.source} against {args.cfg} + {args.weights} ({report.dialect})")
    print("\n".join(report.format_lines()))
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    print(f"{report.out}: written; check passes on every layer "
          f"({len(report.after.layers)} layers)")
    return 0
