"""Lets `import timm` work without torchvision.

torchvision has no CPU wheel on this platform, and timm imports a few of its names at
module import time (transforms, FrozenBatchNorm2d) that the PVT v2 model never calls.
Every `torchvision.*` import gets a module whose attributes are inert placeholders.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _PlaceholderMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return name


class _StubModule(types.ModuleType):
    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _PlaceholderMeta(name, (), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def install():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.insert(0, _StubFinder())
