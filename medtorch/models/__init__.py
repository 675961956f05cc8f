"""Trained models MedTorch ships and reads: the *model pack* (:mod:`medtorch.models.pack`).

A model pack is one ``.zip`` file: the weights (a PyTorch ``state_dict``), a configuration
JSON (what the network is and what inputs it takes), a licence / model-card text, and a
SHA-256 manifest that is checked before anything in the pack is read.
"""

from __future__ import annotations

from medtorch.models.pack import ModelPack, pack_sha256, read_pack, verify_pack, write_pack

__all__ = ["ModelPack", "pack_sha256", "read_pack", "verify_pack", "write_pack"]
