"""Trained models MedTorch ships and reads: the *model pack* (:mod:`medtorch.models.pack`).

A model pack is one ``.zip`` file: the weights (a PyTorch ``state_dict``), a configuration
JSON (what the network is and what inputs it takes), a license / model-card text, and a
SHA-256 manifest that is checked before anything in the pack is read. Segmentation packs
(:mod:`medtorch.models.segmentation`) add the bundle configs and the license text; the model
store (:mod:`medtorch.models.store`) installs packs by name; the catalog
(:mod:`medtorch.models.catalog`) downloads public models (:mod:`medtorch.models.download`)
when the user asks and agrees. Importing this package imports only the pack reader.
"""

from __future__ import annotations

from medtorch.models.pack import ModelPack, pack_sha256, read_pack, verify_pack, write_pack

__all__ = ["ModelPack", "pack_sha256", "read_pack", "verify_pack", "write_pack"]
