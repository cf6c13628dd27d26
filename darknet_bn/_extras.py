"""The optional extras and the ``pip install`` that adds one, worded for where the
running package comes from: its source checkout (``pip install '.[onnx]'``), an
installed distribution (``pip install 'darknet_bn[onnx]'``, which pip resolves
against the installed copy), or else the packages themselves."""
import configparser
import importlib.metadata
import os
from pathlib import Path

#: Optional packages -> the extra of darknet_bn that installs them.
EXTRAS = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnx", "matplotlib": "plot",
          "tbb": "tbb", "tflite": "tflite", "openvino": "openvino"}

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root():
    """The source tree the package is imported from (its ``setup.cfg`` names the
    package), or None for an installed copy."""
    setup = PACKAGE_DIR.parent / "setup.cfg"
    config = configparser.ConfigParser()
    try:
        config.read(setup)
    except (configparser.Error, OSError):
        return None
    return PACKAGE_DIR.parent if config.get("metadata", "name", fallback="") == \
        PACKAGE_DIR.name else None


def installed_distribution():
    """The name of the installed distribution whose files hold the running package,
    or None."""
    try:
        names = importlib.metadata.packages_distributions().get(PACKAGE_DIR.name, [])
        for name in names:
            init = importlib.metadata.distribution(name).locate_file(
                f"{PACKAGE_DIR.name}/__init__.py")
            if Path(init).resolve() == PACKAGE_DIR / "__init__.py":
                return name
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        pass
    return None


def install_command(extra):
    """The ``pip install`` that adds ``extra`` where the package runs from."""
    root = checkout_root()
    if root is not None:
        here = Path(os.getcwd()).resolve() == root
        return f"pip install '{'.' if here else root}[{extra}]'"
    dist = installed_distribution()
    if dist is not None:
        return f"pip install '{dist}[{extra}]'"
    return "pip install " + " ".join(p for p, e in EXTRAS.items() if e == extra)


def missing_package(package, what="this"):
    """The one-line fix for an optional ``package`` that is not installed, or None when
    no extra provides it."""
    extra = EXTRAS.get(package)
    if extra is None:
        return None
    return f"{what} needs {package}, which is not installed: {install_command(extra)}"
