"""Darknet model files: ``.cfg`` parsing with Darknet's shape inference.

- ``parser``: ``read_cfg``, ``parse_cfg`` -> ``Network`` of ``LayerSpec`` (src/parser.c)
"""
from .parser import (PARSER_DIALECTS, CfgError, LayerSpec, Network, UnsupportedCfgError,
                     parse_cfg, read_cfg)

__all__ = ["parse_cfg", "read_cfg", "Network", "LayerSpec", "CfgError", "UnsupportedCfgError",
           "PARSER_DIALECTS"]
