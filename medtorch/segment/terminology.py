"""Standard names, colours and codes of brain-tumor segments and regions.

Codes follow DICOM's context groups for brain lesion segmentation (CID 7168 *Brain Lesion
Segmentation Type With Necrosis* and CID 7169 *... Without Necrosis*): necrosis SCT 6574001,
oedema SCT 79654002, enhancing lesion NCIt C113842, non-enhancing lesion NCIt C81175,
background DCM 125040, normal tissue SCT 17621005; the category is *Morphologically Altered
Structure* (SCT 49755003) and the anatomic region the brain (SCT 12738006). The BraTS
regions have no codes of their own: tumor core and whole tumor are typed *Neoplasm*
(SCT 108369006) and told apart by their names.

:func:`slicer_terminology` writes an entry in 3D Slicer's terminology string format
(``context~category~type~type modifier~anatomic context~region~region modifier``, each
code ``scheme^value^meaning``), as a segment's ``TerminologyEntry`` tag takes it. Nothing
here imports Slicer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from medtorch.errors import MedTorchInputError

__all__ = [
    "Code",
    "TumorTerm",
    "TERMS",
    "BRAIN",
    "term",
    "find_term",
    "slicer_terminology",
    "brats_terms",
    "class_terms",
    "SLICER_CATEGORY_CONTEXT",
    "SLICER_ANATOMIC_CONTEXT",
]

#: Slicer's names of the DICOM terminology contexts.
SLICER_CATEGORY_CONTEXT = "Segmentation category and type - DICOM master list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


MORPHOLOGICALLY_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
BRAIN = Code("SCT", "12738006", "Brain")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")


@dataclass(frozen=True)
class TumorTerm:
    """A named, coloured, coded segment (or region) of a brain tumor."""

    key: str
    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    modifier: Code | None = None
    region: Code | None = BRAIN
    aliases: tuple[str, ...] = ()


TERMS: dict[str, TumorTerm] = {t.key: t for t in (
    TumorTerm("necrosis", "Necrosis", (0.80, 0.16, 0.16), MORPHOLOGICALLY_ALTERED, Code("SCT", "6574001", "Necrosis"),
              aliases=("necrotic", "necrotic core", "nec")),
    TumorTerm("ncr", "Necrotic and non-enhancing tumor core", (0.80, 0.16, 0.16), MORPHOLOGICALLY_ALTERED,
              Code("SCT", "6574001", "Necrosis"),
              aliases=("ncr", "ncr/net", "net", "necrotic tumor core", "core", "tumor core label", "necrosis/core",
                       "non-enhancing core", "necrotic and non-enhancing tumor core")),
    TumorTerm("non_enhancing", "Non-enhancing tumor", (0.60, 0.35, 0.75), MORPHOLOGICALLY_ALTERED,
              Code("NCIt", "C81175", "Non-Enhancing Lesion"),
              aliases=("non-enhancing tumor", "non-enhancing tumour", "non-enhancing lesion", "nonenhancing")),
    TumorTerm("enhancing", "Enhancing tumor", (0.98, 0.85, 0.20), MORPHOLOGICALLY_ALTERED,
              Code("NCIt", "C113842", "Enhancing Lesion"),
              aliases=("et", "enhancing", "enhancing tumour", "enhancing lesion", "enhancing rim", "gd-enhancing tumor")),
    TumorTerm("edema", "Edema", (0.30, 0.75, 0.35), MORPHOLOGICALLY_ALTERED, Code("SCT", "79654002", "Edema"),
              aliases=("ed", "oedema", "peritumoral edema", "peritumoral oedema", "edema")),
    TumorTerm("tumor", "Tumor", (0.85, 0.20, 0.20), MORPHOLOGICALLY_ALTERED, NEOPLASM,
              aliases=("tumour", "lesion", "neoplasm", "mass")),
    TumorTerm("normal", "Normal tissue", (0.55, 0.55, 0.55), TISSUE, Code("SCT", "17621005", "Normal"),
              aliases=("normal", "healthy tissue", "brain")),
    TumorTerm("background", "Background", (0.20, 0.20, 0.20), TISSUE, Code("DCM", "125040", "Background"),
              region=None, aliases=("bg", "outside")),
    # BraTS regions
    TumorTerm("TC", "Tumor core", (0.93, 0.50, 0.10), MORPHOLOGICALLY_ALTERED, NEOPLASM,
              aliases=("tc", "tumour core")),
    TumorTerm("WT", "Whole tumor", (0.30, 0.55, 0.90), MORPHOLOGICALLY_ALTERED, NEOPLASM,
              aliases=("wt", "whole tumour", "complete tumor")),
    TumorTerm("ET", "Enhancing tumor region", (0.98, 0.85, 0.20), MORPHOLOGICALLY_ALTERED,
              Code("NCIt", "C113842", "Enhancing Lesion"), aliases=("et region",)),
)}


def _norm(text: str) -> str:
    return re.sub(r"[\s_]+", " ", text.strip().lower())


def find_term(name: str) -> TumorTerm | None:
    """The term whose key, name or alias matches ``name`` (case and spacing ignored), or None."""
    n = _norm(name)
    if name in TERMS:
        return TERMS[name]
    for t in TERMS.values():
        if n in (_norm(t.key), _norm(t.name)) or n in (_norm(a) for a in t.aliases):
            return t
    return None


def term(name: str) -> TumorTerm:
    """The term named ``name`` (key, name or alias); see :data:`TERMS`."""
    t = find_term(name)
    if t is None:
        raise MedTorchInputError(f"no standard tumor term is named {name!r}",
                                 "use one of " + ", ".join(sorted(TERMS)))
    return t


def slicer_terminology(t: TumorTerm, context: str = SLICER_CATEGORY_CONTEXT,
                       anatomic_context: str = SLICER_ANATOMIC_CONTEXT) -> str:
    """``t`` in Slicer's terminology string format (a segment's ``TerminologyEntry`` tag)."""
    empty = "^^"
    modifier = t.modifier.slicer() if t.modifier else empty
    region = t.region.slicer() if t.region else empty
    anat = anatomic_context if t.region else ""
    return "~".join([context, t.category.slicer(), t.type.slicer(), modifier, anat, region, empty])


def brats_terms(convention: str = "brats2023") -> dict[int, TumorTerm]:
    """Label value -> term of the BraTS classes (NCR, ED, ET) in a convention."""
    from medtorch.segment.postprocess import BRATS_LABELS

    if convention not in BRATS_LABELS:
        raise MedTorchInputError(f"unknown BraTS label convention {convention!r}", "use brats2021 or brats2023")
    lab = BRATS_LABELS[convention]
    return {lab["NCR"]: TERMS["ncr"], lab["ED"]: TERMS["edema"], lab["ET"]: TERMS["enhancing"]}


_FALLBACK_COLORS = [(0.85, 0.35, 0.65), (0.40, 0.70, 0.85), (0.65, 0.55, 0.30), (0.45, 0.85, 0.70),
                    (0.75, 0.45, 0.25), (0.55, 0.55, 0.90)]


def class_terms(values: Sequence[int], names: Mapping[int, str] | None = None) -> dict[int, TumorTerm]:
    """Terms for the classes of a segmentation: by their names when they are standard ones
    (``"Necrosis"``, ``"oedema"``, ``"ET"`` ...), else a *Tumor* term carrying the given name
    (or ``"Class <v>"``) and a colour of its own."""
    out: dict[int, TumorTerm] = {}
    for i, v in enumerate(values):
        given = (names or {}).get(int(v))
        found = find_term(given) if given else None
        if found is not None:
            out[int(v)] = TumorTerm(found.key, given or found.name, found.color, found.category, found.type,
                                    found.modifier, found.region, found.aliases)
        else:
            base = TERMS["tumor"]
            out[int(v)] = TumorTerm(f"class_{int(v)}", given or f"Class {int(v)}",
                                    _FALLBACK_COLORS[i % len(_FALLBACK_COLORS)], base.category, base.type)
    return out
