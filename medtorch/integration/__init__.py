"""Glue between the core and 3D Slicer: MRML conversion, background jobs, dependencies.

These modules import Slicer, VTK or Qt lazily, inside functions, so that importing them
never fails outside Slicer.
"""
