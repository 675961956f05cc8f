"""Widget plumbing shared by MedTorch's Slicer modules, after Slicer's scripted-module template.

:class:`ModuleWidgetMixin` holds what every module widget does the same way: load the
``.ui``, bind the parameter node to it (``connectGui``), keep the Apply button's state,
follow scene close, and run a :class:`~medtorch.slicer.jobs.LogicJob` in the
background with a progress dialog and Cancel. A module's widget class lists it first:

    class MyWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
        uiFileName = "UI/My.ui"
        def setup(self):
            ScriptedLoadableModuleWidget.setup(self)
            self.setupModuleWidget(MyLogic())
        def canApply(self, p): return p.inputVolume is not None
        def onApplyButton(self): self.runJob(self.logic.myJob(...), "My module", self.onDone)
"""

from __future__ import annotations

from typing import Any, Callable


class ModuleWidgetMixin:
    uiFileName = ""
    applyToolTip = "Run"
    missingInputsToolTip = "Select the inputs"

    logic: Any
    ui: Any
    _parameterNode: Any
    _parameterNodeGuiTag: Any
    runner: Any

    def setupModuleWidget(self, logic: Any) -> None:
        import slicer

        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.runner = None
        uiWidget = slicer.util.loadUI(self.resourcePath(self.uiFileName))  # type: ignore[attr-defined]
        self.layout.addWidget(uiWidget)  # type: ignore[attr-defined]
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)  # type: ignore[attr-defined]
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)  # type: ignore[attr-defined]
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    # -- template lifecycle ----------------------------------------------------------------
    def cleanup(self) -> None:
        if self.runner is not None:
            self.runner.cancel()
        self.removeObservers()  # type: ignore[attr-defined]

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self._unobserveParameterNode()

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if getattr(self.parent, "isEntered", False):  # type: ignore[attr-defined]
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.selectDefaultInputs(self._parameterNode)

    def selectDefaultInputs(self, parameterNode: Any) -> None:
        """Pick sensible inputs when none is chosen yet (override)."""

    def _unobserveParameterNode(self) -> None:
        import vtk

        if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply):  # type: ignore[attr-defined]
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)  # type: ignore[attr-defined]

    def setParameterNode(self, inputParameterNode: Any) -> None:
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._unobserveParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)  # type: ignore[attr-defined]
            self._checkCanApply()

    # -- apply ---------------------------------------------------------------------------------
    def canApply(self, parameterNode: Any) -> bool:
        return True

    @property
    def busy(self) -> bool:
        return self.runner is not None and self.runner.status == "running"

    def _checkCanApply(self, caller: Any = None, event: Any = None) -> None:
        ready = bool(self._parameterNode) and self.canApply(self._parameterNode) and not self.busy
        self.ui.applyButton.toolTip = self.applyToolTip if ready else self.missingInputsToolTip
        self.ui.applyButton.enabled = ready

    def onApplyButton(self) -> None:  # pragma: no cover - every module overrides it
        raise NotImplementedError

    def runJob(self, job: Any, title: str, on_done: Callable[[Any], None]) -> Any:
        """Run ``job`` in the background: progress dialog, Cancel, GUI stays responsive."""
        from medtorch.slicer.jobs import QtJobRunner

        def done(output: Any) -> None:
            on_done(output)
            self._checkCanApply()

        self.runner = QtJobRunner(job, title, on_done=done, on_error=self.onJobError, on_cancelled=self.onJobCancelled)
        self.runner.start()
        self.ui.statusLabel.text = "Running..."
        self._checkCanApply()
        return self.runner

    # -- Export to DICOM ---------------------------------------------------------------------------
    def setupDicomExport(self, folderButton: Any) -> None:
        """Give the output-folder button (``ctkDirectoryButton``) of an Export to DICOM section a
        folder to start from: Slicer's default scene folder, else the home folder."""
        import os

        import slicer

        if not folderButton.directory or folderButton.directory == ".":
            folderButton.directory = getattr(slicer.app, "defaultScenePath", "") or os.path.expanduser("~")

    def runDicomExport(self, export: Callable[[], Any], label: Any) -> Any:
        """Run ``export`` (a Logic export returning :class:`medtorch.slicer.dicom.ExportResult`) and
        show its sentence in ``label``; a refusal (no reference, a failed geometry check) shows its
        problem and what to do there and in an error dialog (Slicer's ``tryWithErrorDisplay``)."""
        import slicer

        with slicer.util.tryWithErrorDisplay("Failed to export to DICOM.", waitCursor=True):
            try:
                result = export()
            except Exception as exc:
                label.text = f"Not exported: {exc}"
                raise
        label.text = result.message
        return result

    def onJobCancelled(self) -> None:
        self.ui.statusLabel.text = "Cancelled: nothing was changed"
        self._checkCanApply()

    def onJobError(self, message: str) -> None:
        import slicer

        self.ui.statusLabel.text = f"Failed: {message}"
        slicer.util.errorDisplay(f"{message}")
        self._checkCanApply()
