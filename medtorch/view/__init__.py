"""``medtorch view``: a browser viewer for the outputs of ``medtorch batch``, ``pipeline`` and ``demo``.

:mod:`medtorch.view.outputs` reads what an output folder holds (no Slicer needed);
:mod:`medtorch.view.scene` shows a case in Slicer's views rendered offscreen
(:mod:`medtorch.slicer.views`); :mod:`medtorch.view.app` serves them to a web page with trame.
Nothing in the core imports this package.
"""
