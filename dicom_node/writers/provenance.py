"""Who made an output and when, as IHE AI Results (AIR) asks of every AI result object.

* Contributing Equipment Sequence (SOP Common, PS3.3 C.12.1): one item for the algorithm that made the
  object - Manufacturer, Manufacturer's Model Name (the model), Software Versions (SpineNode's version and
  the model's weights version), a Device UID that changes whenever the model or its weights change
  (``uids.device_uid``, the SR's device observer UID too), the date and time of the analysis, and the
  Purpose of Reference. AIR names the purpose "Processing Algorithm"; the DICOM code dictionary at hand
  (pydicom's, CID 7005 "Contributing Equipment Purposes of Reference") has no such concept, so the
  defined term closest to it is used, DCM 109102 "Processing Equipment", rather than a code made up here.
* Content Date and Content Time: when the analysis started (highdicom stamps the moment each object is
  constructed, which is later).
* TID 4019 Algorithm Identification of the model, for every SR measurement group (``algorithm_id``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.writers.uids import device_uid
from inference.model_card import ModelCard

PURPOSE_OF_REFERENCE = codes.DCM.ProcessingEquipment  # CID 7005; see the module docstring
DA_FORMAT, TM_FORMAT = "%Y%m%d", "%H%M%S.%f"  # DICOM DA and TM (a DT is the two together)
LO_MAX = 64  # characters of a Long String (Manufacturer's Model Name, Software Versions)


def contributing_equipment(card: ModelCard, manufacturer: str, software_version: str, started: datetime) -> Dataset:
    """The Contributing Equipment item of ``card``'s model run by this SpineNode at ``started``."""
    purpose = Dataset()
    purpose.CodeValue = PURPOSE_OF_REFERENCE.value
    purpose.CodingSchemeDesignator = PURPOSE_OF_REFERENCE.scheme_designator
    purpose.CodeMeaning = PURPOSE_OF_REFERENCE.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = manufacturer
    item.ManufacturerModelName = (card.display_name or card.name)[:LO_MAX]
    item.SoftwareVersions = [software_version[:LO_MAX], f"{card.name} {card.version}"[:LO_MAX]]
    item.DeviceUID = device_uid(card.name, card.weights_sha256)
    item.ContributionDateTime = started.strftime(DA_FORMAT + TM_FORMAT)
    item.ContributionDescription = f"AI segmentation and measurements by {card.name} {card.version}"
    return item


def stamp(
    outputs: Iterable[Dataset], card: ModelCard, manufacturer: str, software_version: str, started: datetime
) -> None:
    """Give each of ``outputs`` the model's Contributing Equipment item and the analysis start as its
    content date and time."""
    equipment = contributing_equipment(card, manufacturer, software_version, started)
    for ds in outputs:
        ds.ContributingEquipmentSequence = [equipment]
        ds.ContentDate = started.strftime(DA_FORMAT)
        ds.ContentTime = started.strftime(TM_FORMAT)


def algorithm_id(card: ModelCard) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for ``card``'s model: its name, weights version and the AI family."""
    return hd.sr.AlgorithmIdentification(name=card.name, version=card.version, family=codes.DCM.ArtificialIntelligence)


__all__ = ["PURPOSE_OF_REFERENCE", "algorithm_id", "contributing_equipment", "stamp"]
