import os
import sys
from pathlib import Path

from hypothesis import settings

# tests/ helpers (naive.py, _routines.py, _compare.py) import each other by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Hypothesis draws the same examples on every run ("derandomize"): a failure shows
# up again on the next run, and the falsifying example (with its seed) is printed.
# DARKNET_BN_HYPOTHESIS=explore draws fresh random examples for a deeper hunt.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("DARKNET_BN_HYPOTHESIS", "deterministic"))


# --------------------------------------------------------------------------
# `make test` and `make test-slow`
# --------------------------------------------------------------------------
#: The long cross products (fork x exporter x format x ...), each case an export, a
#: conversion or a child process.  `make test` runs the parameters named here, so
#: that every fork, exporter, format and command is met at least once; the other
#: combinations are marked slow and run in `make test-slow` (CI runs both).
QUICK_PARAMETERS = {
    "test_fix.py::test_int8_onnx_requantized_with_the_stored_scales": {"qdq-True"},
    "test_fix.py::test_openvino_ir": {"pjreddie-FP16", "alexeyab-FP32"},
    "test_fix.py::test_dynamo_exporter": {"alexeyab"},
    "test_fix.py::test_conv_weights_behind_transpose_and_bias_as_a_separate_add":
        {"pjreddie-folded", "alexeyab-batchnorm-nodes"},
    "test_fix.py::test_torchscript_exporter": {"pjreddie-batchnorm-nodes", "alexeyab-folded"},
    "test_fix.py::test_batchnorm_as_elementwise_ops": {"pjreddie-sub-div-sqrt", "alexeyab-mul-add"},
    "test_fix.py::test_onnxslim": {"alexeyab"},
    "test_fix.py::test_out_of_order_port_state_dict_and_live_module": {"pjreddie"},
    "test_fix.py::test_header_shift_misread_is_rewritten": {"alexeyab"},
    "test_fix.py::test_float16_initializers_behind_casts": {"pjreddie"},
    "test_check_formats.py::test_int8_onnx": {"pjreddie-qdq-per-channel", "alexeyab-qdq-per-tensor",
                                              "alexeyab-qoperator", "hankai-dynamic"},
    "test_check_formats.py::test_openvino_ir": {"pjreddie-fp16", "alexeyab-fp32", "hankai-fp16"},
    "test_check_formats.py::test_openvino_ir_batchnorm_as_multiply_add": {"alexeyab"},
    "test_check_forms.py::test_dynamo_exporter": {"hankai"},
    "test_model_pairing.py::test_onnx_export_pairs_by_the_graph": {"alexeyab-dynamo"},
    "test_torch_onnx.py::test_each_layer_within_check_tolerance":
        {"pjreddie-torchscript", "alexeyab-torchscript"},
    "test_torch_onnx.py::test_bn_zoo_export_checks_and_runs": {"alexeyab-dynamo", "pjreddie-torchscript"},
    "test_torch_compile.py::test_compile_fullgraph_matches_eager":
        {"pjreddie-2d", "alexeyab-1d", "hankai-2d"},
    "test_torch_train.py::test_round_trip_example": {"alexeyab"},
    "test_cli_conventions.py::test_the_commands_write_files_with_the_mode_open_gives": {"077"},
    "test_cli_conventions.py::test_swapped_arguments_are_named_with_the_order":
        {"check-01", "fold-12", "fix-23", "to-weights-02", "inspect-01"},
    "test_cli_conventions.py::test_files_of_the_wrong_kind_are_named_for_what_they_are":
        {"to-weights-args0-words0", "check-args4-words4", "fix-args9-words9",
         "fold-args6-words6", "inspect-args5-words5"},
}


def pytest_collection_modifyitems(config, items):
    import pytest
    seen = {}
    for item in items:
        key = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        quick = QUICK_PARAMETERS.get(key)
        if quick is None or not hasattr(item, "callspec"):
            continue
        seen.setdefault(key, set()).add(item.callspec.id)
        if item.callspec.id not in quick:
            item.add_marker(pytest.mark.slow)
    if config.option.keyword or any("::" in arg for arg in config.args):
        return           # a selection of cases: the table is checked on whole files
    for key, ids in seen.items():
        missing = QUICK_PARAMETERS[key] - ids
        if missing:      # a renamed parameter would silently move a test out of `make test`
            raise pytest.UsageError(f"tests/conftest.py QUICK_PARAMETERS[{key!r}] names "
                                    f"{sorted(missing)}, which are not among {sorted(ids)}")
