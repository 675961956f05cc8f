"""Write each module's Qt Designer ``.ui`` file from a compact Python description.

Developer tool (not shipped): ``python tools/make_ui.py`` regenerates
``<Module>/Resources/UI/<Module>.ui`` from ``tools/ui/<module>.py`` (one file per module).
The ``.ui`` files are what Slicer loads; this keeps them consistent: every widget has a
tooltip, units show as suffixes, each parameter-node field is bound through
``SlicerParameterName``, and a combo box of a choice that an operation's request defines
lists that request's choices (:mod:`medtorch.ops`; the repository root is put on the path).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODULES = {"FusionRegistration": "fusion_registration", "EnhanceSR": "enhance_sr", "SegmentTumor": "segment_tumor"}


def main(names: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO))  # medtorch.ops: the requests' choices
    for module, py in MODULES.items():
        if names and module not in names:
            continue
        build = importlib.import_module(f"ui.{py}").build
        path = REPO / module / "Resources" / "UI" / f"{module}.ui"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(build(), encoding="utf-8")
        print("wrote", path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
