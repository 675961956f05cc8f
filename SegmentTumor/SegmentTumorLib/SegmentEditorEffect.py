"""The Segment Editor effect "Grow from seeds (MedTorch)", beside Slicer's own *Grow from seeds*.

It is an auto-complete effect, as Slicer's is: paint a few strokes in each segment (the tumor
segments and a segment named "Background", or the last segment) and press *Initialize*; the
preview updates a moment after each new stroke; *Apply* writes it into the segments as one
undo step and *Cancel* leaves the segmentation as it was (both from Slicer's
``AbstractScriptedSegmentEditorAutoCompleteEffect``). The computation is MedTorch's seeded
segmentation (:class:`SegmentTumorLib.GrowFromSeeds.GrowFromSeedsLogic`), which keeps the source
volume's features between strokes. This file needs the Slicer application (Qt); its logic is
tested headlessly.
"""

import logging
import os

import qt
import slicer
from slicer.i18n import tr as _

from SegmentEditorEffects import AbstractScriptedSegmentEditorAutoCompleteEffect

from SegmentTumorLib.GrowFromSeeds import GrowFromSeedsLogic, background_label


class SegmentEditorEffect(AbstractScriptedSegmentEditorAutoCompleteEffect):
    """Grow the painted segments over the source volume with MedTorch's seeded segmentation."""

    def __init__(self, scriptedEffect):
        AbstractScriptedSegmentEditorAutoCompleteEffect.__init__(self, scriptedEffect)
        scriptedEffect.name = "Grow from seeds (MedTorch)"  # not translated: effects are found by name
        scriptedEffect.title = _("Grow from seeds (MedTorch)")
        self.minimumNumberOfSegments = 2
        self.clippedMasterImageDataRequired = True  # the source volume's voxels are used
        self.extentGrowthRatio = 0.2  # the region around the seeds, as Slicer's Grow from seeds without a mask
        self.logic = GrowFromSeedsLogic()

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return "<html>" + _("""Grow the painted segments into a full segmentation with MedTorch's seeded
segmentation (geodesic competition).<p>
<ul style="margin: 0">
<li>Paint a few strokes in each tumor segment and in a segment named <b>Background</b> (or make the
background the last segment) around the tumor, on one or a few slices.</li>
<li>Click <dfn>Initialize</dfn>: every voxel near the seeds goes to the segment whose seeds reach it along
the cheapest path, paying for changes of intensity and for tissue that looks more like another segment's
seeds. A region that merely looks like the tumor but lies apart from it is not taken.</li>
<li>Where the preview is wrong, paint a stroke there (with Paint or Draw); the preview updates by itself.</li>
<li>Click <dfn>Apply</dfn> to write the preview into the segments (one undo step), or <dfn>Cancel</dfn> to
leave them as they were.</li>
</ul><p>""")

    def reset(self):
        self.logic.reset()
        AbstractScriptedSegmentEditorAutoCompleteEffect.reset(self)
        self.updateGUIFromMRML()

    def _backgroundValue(self):
        segmentation = self.scriptedEffect.parameterSetNode().GetSegmentationNode().GetSegmentation()
        ids = list(self.selectedSegmentIds or [])
        names = [segmentation.GetSegment(i).GetName() for i in ids]
        return background_label(names) if names else None

    def computePreviewLabelmap(self, mergedImage, outputLabelmap):
        from medtorch.errors import MedTorchError

        try:
            self.logic.preview(self.clippedMasterImageData, mergedImage, outputLabelmap, self._backgroundValue())
        except MedTorchError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("Grow from seeds (MedTorch)"))
            raise
        verdict = self.logic.last.get("verdict")
        if verdict is not None and not verdict.passed:
            # a preview that may be wrong says so (status bar and log), without interrupting the painting
            message = _("Grow from seeds (MedTorch): check the preview. ") + " ".join(
                c.message + "." for c in verdict.reasons)
            logging.warning(message)
            try:
                slicer.util.showStatusMessage(message, 8000)
            except Exception:  # noqa: BLE001 - no main window (headless)
                pass
