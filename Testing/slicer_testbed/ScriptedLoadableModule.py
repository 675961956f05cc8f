"""Stand-in for ``slicer.ScriptedLoadableModule``: the four base classes of a scripted module.

They behave as Slicer's do where MedTorch's modules rely on it: module metadata on
``parent``, ``resourcePath``, the singleton parameter node per module, and a
``unittest.TestCase`` base for self-tests with ``delayDisplay``.
"""

from __future__ import annotations

import logging
import os
import sys
import types
import unittest
from typing import Any

import qt
import slicer

__all__ = [
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleWidget",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
]


def _module_dir(obj: Any) -> str:
    return os.path.dirname(os.path.abspath(sys.modules[type(obj).__module__].__file__ or ""))


class ScriptedLoadableModule:
    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        parent.icon = None
        slicer.moduleMetadata[self.moduleName] = parent

    def resourcePath(self, filename: str) -> str:
        return os.path.join(_module_dir(self), "Resources", filename)

    def getDefaultModuleDocumentationLink(self, docPage: str | None = None) -> str:
        return ""

    def runTest(self, msec: int = 100, **kwargs: Any) -> None:
        test_class = getattr(sys.modules[type(self).__module__], self.moduleName + "Test")
        test_class().runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: Any = None) -> None:
        self.parent = parent if parent is not None else qt.QWidget()
        self.layout = self.parent.layout() or qt.QVBoxLayout(self.parent)
        self.moduleName = self.__class__.__name__[: -len("Widget")]
        self.developerMode = False

    def resourcePath(self, filename: str) -> str:
        return os.path.join(_module_dir(self), "Resources", filename)

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent: Any = None) -> None:
        name = self.__class__.__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self) -> Any:
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.UnRegister(None) if hasattr(node, "UnRegister") and False else None
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node.SetModuleName(self.moduleName)
            node = scene.AddNode(node)
        return node

    def getAllParameterNodes(self) -> list[Any]:
        return [n for n in slicer.util.getNodesByClass("vtkMRMLScriptedModuleNode")
                if n.GetAttribute("ModuleName") == self.moduleName or n.GetModuleName() == self.moduleName]


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def runTest(self) -> None:  # pragma: no cover - overridden by every module
        pass

    def delayDisplay(self, message: str, requestedDelay: int | None = None, msec: int | None = None) -> None:
        logging.info(message)

    def takeScreenshot(self, name: str, description: str, type: int = -1) -> None:
        logging.info("screenshot skipped (no views): %s", name)
