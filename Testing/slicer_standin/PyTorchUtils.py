"""Stand-in for the PyTorch extension's PyTorchUtils (SlicerPyTorch e1c85cc, PyTorchUtils.py), install path only."""

import importlib.metadata

import slicer


class PyTorchUtilsLogic:
    @staticmethod
    def torchInstalled():
        try:
            importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        args = ["install", "torch" + (torchVersionRequirement or ""), "torchvision" + (torchvisionVersionRequirement or "")]
        try:
            import light_the_torch._patch  # noqa: F401
        except ImportError:
            slicer.util.pip_install("light-the-torch>=0.5")  # no constraints: pip follows light-the-torch's pins
        slicer.util._executePythonModule("light_the_torch", args)
        import torch

        return torch
