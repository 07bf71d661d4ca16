"""Body Part Examined and Laterality of the overlay SC, from its source.

Laterality (General Series) is type 2C: required when the body part is a paired structure and the image
has no Image or Frame Laterality (PS3.3 C.7.3.1). dciodvfy rejects it for an unpaired body part (such as
SPINE), so an output of such a source carries none; PixelMed's validator (2022) asks for it whatever the
body part, which is its defect (see ``tests/pixelmed.py``).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

PAIRED_LATERALITY = frozenset({"L", "R"})  # the values Laterality (General Series) allows
# Body Part Examined defined terms of unpaired structures (PS3.16 Annex L), as dciodvfy knows them:
# with one of these an output carries no Laterality; with any other value (paired, non-standard such as
# "THORAX", or none) Laterality is required (type 2C) and the output carries it, empty when unknown.
UNPAIRED_BODY_PARTS = frozenset(
    """ABDOMEN ABDOMENPELVIS AORTA BLADDER BRAIN CEREBELLUM CERVIX CHEST CHESTABDPELVIS CIRCLEOFWILLIS
    COCCYX COLON CORONARYARTERY CSPINE CTSPINE DUODENUM ESOPHAGUS GALLBLADDER HEAD HEADNECK HEART ILEUM
    ILIUM JAW JEJUNUM LARYNX LIVER LSPINE LSSPINE MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN
    NECKCHESTABDPELV NOSE PANCREAS PELVIS PENIS PHARYNX PROSTATE RECTUM SCALP SKULL SPINE SPLEEN SSPINE
    STERNUM STOMACH THYMUS THYROID TLSPINE TONGUE TRACHEA TSPINE URETER URETHRA UTERUS VAGINA VULVA
    WHOLEBODY""".split()  # noqa: SIM905 - sixty terms read better as the standard's list than as literals
)


def copy_anatomy(output: Dataset, source: Dataset) -> None:
    """Body Part Examined, and Laterality (type 2C) unless the body part is a known unpaired structure.

    Laterality is the source's, else its Image Laterality when that is L or R, else empty.
    """
    body_part = str(source.get("BodyPartExamined", "") or "")
    if body_part:
        output.BodyPartExamined = body_part
    if body_part.strip().upper() in UNPAIRED_BODY_PARTS:
        return
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "")
        if value in PAIRED_LATERALITY:
            output.Laterality = value
            return
    output.Laterality = ""


__all__ = ["PAIRED_LATERALITY", "UNPAIRED_BODY_PARTS", "copy_anatomy"]
