"""Glue between the core and 3D Slicer, generic to every MedTorch module (Slicer, VTK and Qt
are imported lazily, inside functions, so importing these modules never fails outside Slicer):

* :mod:`medtorch.slicer.mrml` -- MRML nodes to and from :class:`~medtorch.volume.Volume`:
  volumes, segmentations, transforms (registration results), markups (RAS <-> LPS through
  :mod:`medtorch.coords`, the one module that converts);
* :mod:`medtorch.slicer.tables` -- rows of values into table nodes;
* :mod:`medtorch.slicer.jobs` -- a module Logic's operation, blocking or in the background;
* :mod:`medtorch.slicer.widgets` -- what every module widget does (parameter node, scene
  close, running a job with progress and cancel);
* :mod:`medtorch.slicer.dependencies` -- Python packages checked and installed on first use;
* :mod:`medtorch.slicer.views`, :mod:`medtorch.slicer.renders`, :mod:`medtorch.slicer.checks`
  -- slice and 3D views rendered offscreen, and the checks made on them.

Scene code that only one module uses lives in that module's ``<Module>Lib`` package
(``FusionRegistrationLib``, ``SegmentTumorLib``). Nothing in the core imports this package.
"""
