"""Slicer glue that needs Slicer's libraries (PyPI's ``slicer-core`` or a Slicer application).

:mod:`medtorch.slicer.views` renders a scene's slice and 3D views to PNG with Slicer's own
displayable managers, offscreen. The rest of the Slicer glue lives in
:mod:`medtorch.integration`. Like it, nothing in the core imports this package.
"""
