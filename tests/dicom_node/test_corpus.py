"""Every file of the shared real-world corpus (``../shared/dicom-corpus``), sent to one node with C-STORE.

Each file is offered in a presentation context of its own SOP class and transfer syntax, and its bytes are
sent as they are in the file (pynetdicom's chunked sending, as dcmtk's storescu would). The outcome must
be the one in :data:`EXPECTED`, decided file by file from ``index.tsv`` and the corpus README:

- PROCESSED: radiographs (CR, DX, SC of an X-ray) whose pixels decode: Success, then SEG + SR + SC with
  zero dciodvfy errors whatever the source header lacks, every SEG frame deriving from the source;
- NOT_NEGOTIATED: SOP classes the node does not segment (MG, CT, MR, NM, RT, SR, PR): refused at
  association negotiation;
- REFUSED: accepted SOP class but unusable (no pixel data, too small, undecodable, not a radiograph,
  invalid UID): 0xC000 with an ErrorComment and an audit ``refused`` event;
- NOT_SENDABLE: no SOP Class UID anywhere in the file: no C-STORE request can name it.

After every file the node still answers C-ECHO.
"""

from __future__ import annotations

import csv
import enum
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from sqlalchemy import select

from dicom_node.audit.records import InstanceRecord, JobRecord, JobState, OutputKind
from dicom_node.config import NodeConfig
from dicom_node.dimse.scp import ACCEPTED_SOP_CLASSES
from dicom_node.dimse.status import StoreStatus
from dicom_node.roles.node import Node
from tests.conftest import SHARED, TINY_MODEL, free_port, session_models
from tests.dciodvfy import dciodvfy_errors

CORPUS = SHARED / "dicom-corpus"
INDEX = CORPUS / "index.tsv"
FILES = CORPUS / "files"
NODE_AE = "SPINENODE"
CALLING_AE = "CORPUS"
LOOPBACK = "127.0.0.1"
JOB_TIMEOUT_S = 180.0
VERIFICATION = "1.2.840.10008.1.1"
OUTPUT_SOP_CLASSES = {
    OutputKind.SEG: "1.2.840.10008.5.1.4.1.1.66.4",
    OutputKind.SR: "1.2.840.10008.5.1.4.1.1.88.34",
    OutputKind.SC: "1.2.840.10008.5.1.4.1.1.7",
}


class Outcome(enum.Enum):
    PROCESSED = "processed"
    NOT_NEGOTIATED = "refused at negotiation"
    REFUSED = "refused with a status"
    NOT_SENDABLE = "cannot be sent"


@dataclass(frozen=True)
class Expected:
    outcome: Outcome
    why: str  # for REFUSED: a part of the audited refusal reason


P, N, R = Outcome.PROCESSED, Outcome.NOT_NEGOTIATED, Outcome.REFUSED
NO_PIXELS, TOO_SMALL, UNDECODABLE = "no pixel data", "too small to segment", "unusable image"

EXPECTED: dict[str, Expected] = {
    # CR: every decodable one is processed, whatever its header lacks.
    "CR_Agfa_ADC_MONO1_12bit_Rescale_16x16.dcm": Expected(P, "rescale, ImagerPixelSpacing only, 16x16"),
    "CR_Fuji_chest_MONO1_10bit_ExplicitLE.dcm": Expected(P, "no spacing, no Patient ID, no orientation"),
    "CR_Fuji_WG04-RG2_MONO2_10bit_JPEGLosslessSV1.dcm": Expected(P, "JPEG Lossless SV1"),
    "CR_Fuji_WG04-RG2_MONO2_JPEGExtended12bit_fixed.dcm": Expected(P, "JPEG Extended 12-bit"),
    "CR_Fuji_WG04-RG3_MONO1_10bit_ExplicitLE_Uncompressed.dcm": Expected(P, "6 MB native, TIFF preamble"),
    "CR_Fuji_WG04-RG3_MONO1_JPEGLSLossless.dcm": Expected(P, "JPEG-LS"),
    "CR_Fuji_WG04-RG3_MONO1_J2KLossless.dcm": Expected(P, "JPEG 2000 lossless"),
    "CR_Fuji_WG04-RG3_MONO1_J2KLossy.dcm": Expected(P, "JPEG 2000"),
    "CR_Siemens_MultixFluorospot_MONO2_Cropped11x15.dcm": Expected(P, "empty Procedure Code Sequence, 11x15"),
    "CR_Fuji_WG04-RG3_MONO1_JPEGExtended_BadSOS.dcm": Expected(R, UNDECODABLE),
    "CR_MONO1_10bit_ModalityLUTSequence_JPEGLosslessSV1.dcm": Expected(R, "invalid SOPInstanceUID"),  # 999.999.01...
    "CR_Canon_CXDI_MONO1_NoPixelData.dcm": Expected(R, NO_PIXELS),
    "CR_Carestream_DRXRevolution_NoPixelData.dcm": Expected(R, NO_PIXELS),
    "CR_Carestream_DR7500_MONO2_Cropped2x2_PSvsIPS.dcm": Expected(R, TOO_SMALL),
    # DX
    "DX_Fujifilm_ForPresentation_MONO1_8bit_169x211.dcm": Expected(P, "THORAX: SC needs Laterality"),
    "DX_Canon_ForPresentation_MONO1_12bit_J2KLossless_Fixed.dcm": Expected(P, "hash as Accession/Birth Date"),
    "DX_Agfa_CR10X_ForPresentation_VOILUTSeq_NoPixelData.dcm": Expected(R, NO_PIXELS),
    "DX_DRGEM_ForPresentation_MONO1_ImplicitLE_Cropped4x4.dcm": Expected(R, TOO_SMALL),
    "DX_GE_XR220_ForProcessing_MONO1_8alloc7stored_Cropped.dcm": Expected(R, TOO_SMALL),
    "DX_GE_XR220_ForProcessing_MONO1_16alloc10stored_Cropped.dcm": Expected(R, TOO_SMALL),
    # Secondary Capture: segmented when it says X-ray (RG: the node cannot tell a film-digitised mammogram).
    "SC_WG04-MG1_Mammo_4664x3064_J2KLossy.dcm": Expected(P, "SC of modality RG, 14 MP"),
    "SC_XA_WG04-XA1_MONO2_10bit_JPEGLosslessSV1.dcm": Expected(R, "modality XA is not a radiograph"),
    "SC_MG_Hologic_SeleniaDimensions_NoPixelData.dcm": Expected(R, NO_PIXELS),
    "NONRAD_SC_DeflatedExplicitLE.dcm": Expected(R, "conversion WSD is not a radiograph"),
    "BROKEN_NM_J2K_EmbeddedSequenceDelimiter.dcm": Expected(R, "modality NM is not a radiograph"),
    # SOP classes the node does not segment.
    "MG_GE_SenographeEssential_ForPresentation_JPEGLosslessSV1_VOILUT.dcm": Expected(N, "MG"),
    "MG_GE_SenographeDS_ForProcessing_MONO1_Cropped.dcm": Expected(N, "MG for processing"),
    "MG_GE_SenographeDS_ForPresentation_VOILUTSeq_Cropped.dcm": Expected(N, "MG"),
    "BROKEN_MG_Hologic_Tomo_LabelledCT_DuplicateFileMetaGroup.dcm": Expected(N, "CT SOP class"),
    "BROKEN_CT_WrongTransferSyntaxInMeta.dcm": Expected(N, "CT"),
    "BROKEN_CT_FileMetaEncodedImplicitVR.dcm": Expected(N, "CT"),
    "BROKEN_EnhMR_J2K_FileTooShort.dcm": Expected(N, "Enhanced MR (File Meta)"),
    "BROKEN_RTDose_BadVR.dcm": Expected(N, "RT Dose"),
    "NONRAD_CT_small.dcm": Expected(N, "CT"),
    "NONRAD_MR_small_ExplicitBigEndian.dcm": Expected(N, "MR, Explicit VR Big Endian"),
    "NONRAD_MR_JPEGLosslessProcess14_57.dcm": Expected(N, "MR"),
    "NONIMG_SR_XRayRadiationDose_Canon_CXDI.dcm": Expected(N, "X-Ray Radiation Dose SR"),
    "NONIMG_PR_GrayscaleSoftcopyPresentationState.dcm": Expected(N, "GSPS"),
    # Neither the data set nor the File Meta names a SOP class.
    "BROKEN_MetaMissingTransferSyntax.dcm": Expected(Outcome.NOT_SENDABLE, "no SOP Class UID"),
}


def index_rows() -> list[dict[str, str]]:
    if not INDEX.is_file():
        return []
    with INDEX.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = index_rows()
pytestmark = pytest.mark.skipif(not ROWS, reason=f"the shared DICOM corpus is not at {INDEX}")


@dataclass
class SentFile:
    sop_class: str | None
    sop_instance: str | None
    transfer_syntax: str | None


def identify(path: Path) -> SentFile:
    """The SOP class, instance and transfer syntax a sender would take from the file."""
    ds = dcmread(path, force=True, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", Dataset())
    sop_class = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "") or None
    sop_instance = str(ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "") or None
    ts = str(meta.get("TransferSyntaxUID") or "") or None
    return SentFile(sop_class, sop_instance, ts)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, models_root: Path) -> Iterator[Node]:
    os.environ["SPINENODE_MODELS_DIR"] = str(models_root)
    config = NodeConfig(
        ae_title=NODE_AE,
        data_dir=tmp_path_factory.mktemp("corpus-var"),
        port=free_port(),
        bind=LOOPBACK,
        model=TINY_MODEL,  # no destination: the outputs stay in the data directory
    )
    n = Node.compose(config, session_models())
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module", autouse=True)
def _send_files_as_they_are() -> Iterator[None]:
    """pynetdicom sends a file's data set bytes unchanged (not decoded and re-encoded)."""
    before = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    yield
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = before


def associate(node: Node, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for abstract, transfer in contexts:
        ae.add_requested_context(abstract, [transfer])
    return ae.associate(LOOPBACK, node.port, ae_title=NODE_AE)


def echo_ok(node: Node) -> bool:
    assoc = associate(node, [(VERIFICATION, "1.2.840.10008.1.2")])
    try:
        return assoc.is_established and int(assoc.send_c_echo().get("Status", -1)) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def store(node: Node, path: Path, sent: SentFile) -> Dataset | None:
    """C-STORE ``path``; the response, or None when the node accepted no context for it."""
    assert sent.sop_class and sent.transfer_syntax
    assoc = associate(node, [(sent.sop_class, sent.transfer_syntax)])
    try:
        if not assoc.is_established or not any(c.abstract_syntax == sent.sop_class for c in assoc.accepted_contexts):
            return None
        return assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()


def wait_for_job(node: Node, sop_uid: str) -> JobRecord:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        with node.db.session() as s:
            job = s.scalar(select(JobRecord).join(InstanceRecord).where(InstanceRecord.sop_instance_uid == sop_uid))
            if job is not None and job.state in (JobState.DONE, JobState.FAILED):
                _ = job.outputs  # loaded while the session is open
                return job
        time.sleep(0.2)
    raise TimeoutError(f"the job of {sop_uid} did not finish in {JOB_TIMEOUT_S} s")


def test_every_corpus_file_has_an_expectation() -> None:
    """A file added to (or removed from) the corpus needs a decision here."""
    assert {row["filename"] for row in ROWS} == set(EXPECTED)


@pytest.mark.parametrize("row", ROWS, ids=[row["filename"] for row in ROWS])
def test_expectation_agrees_with_the_index(row: dict[str, str]) -> None:
    """Processed files are the decodable radiographs; not negotiated ones are the other SOP classes."""
    expected = EXPECTED[row["filename"]]
    accepted_names = set(ACCEPTED_SOP_CLASSES.values())
    if expected.outcome is Outcome.PROCESSED:
        assert row["has_pixel_data"] == "yes" and row["pydicom_decode"].startswith("yes")
        assert row["sop_class"] in accepted_names
    elif expected.outcome is Outcome.NOT_NEGOTIATED:
        assert row["sop_class"].removesuffix(" (from File Meta)") not in accepted_names
    elif expected.outcome is Outcome.REFUSED:
        assert row["sop_class"] in accepted_names


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=[row["filename"] for row in ROWS])
def test_corpus_file_outcome(node: Node, row: dict[str, str]) -> None:
    path = FILES / row["filename"]
    expected = EXPECTED[row["filename"]]
    sent = identify(path)

    if expected.outcome is Outcome.NOT_SENDABLE:
        assert sent.sop_class is None  # no presentation context and no C-STORE request can name it
    else:
        rsp = store(node, path, sent)
        if expected.outcome is Outcome.NOT_NEGOTIATED:
            assert rsp is None, f"{sent.sop_class} was accepted at negotiation"
        elif expected.outcome is Outcome.REFUSED:
            assert rsp is not None and int(rsp.Status) == StoreStatus.CANNOT_UNDERSTAND, rsp
            assert rsp.get("ErrorComment")
            refusals = [e for e in node.db.events("refused") if e.sop_instance_uid == sent.sop_instance]
            assert refusals and refusals[-1].status == StoreStatus.CANNOT_UNDERSTAND
            assert expected.why in (refusals[-1].detail or ""), refusals[-1].detail
        else:
            assert rsp is not None and int(rsp.Status) == StoreStatus.SUCCESS, rsp
            assert sent.sop_instance is not None
            check_outputs(node, sent.sop_instance)
    assert echo_ok(node), "the node stopped answering C-ECHO"


def check_outputs(node: Node, source_uid: str) -> None:
    """SEG, SR and SC written, valid (dciodvfy) and, for the SEG, derived frame by frame from the source."""
    job = wait_for_job(node, source_uid)
    assert job.state == JobState.DONE, job.error
    outputs = {o.kind: o for o in job.outputs}
    assert set(outputs) >= set(OUTPUT_SOP_CLASSES)
    for kind, sop_class in OUTPUT_SOP_CLASSES.items():
        output = outputs[kind]
        assert output.sop_class_uid == sop_class
        assert dciodvfy_errors(output.path) == [], (kind, output.path)
    seg = dcmread(outputs[OutputKind.SEG].path)
    for frame in seg.PerFrameFunctionalGroupsSequence:  # how Weasis matches SEG frames to the image
        [derivation] = frame.DerivationImageSequence
        [image] = derivation.SourceImageSequence
        assert image.ReferencedSOPInstanceUID == source_uid


HUGE_SIDE = 65535  # declared rows and columns: 4.3 gigapixels
HUGE_DATA_BYTES = 256
HEADER_SOURCE = "CR_Agfa_ADC_MONO1_12bit_Rescale_16x16.dcm"
REFUSAL_BEFORE_DECODING_S = 5.0


@pytest.mark.slow
def test_declared_giant_image_is_refused_before_decoding(node: Node) -> None:
    """A real CR header declaring 65535x65535 pixels with 256 bytes of data: refused on the header alone."""
    ds = dcmread(FILES / HEADER_SOURCE)
    ds.Rows = ds.Columns = HUGE_SIDE
    ds.PixelData = bytes(HUGE_DATA_BYTES)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    assoc = associate(node, [(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))])
    try:
        start = time.monotonic()
        rsp = assoc.send_c_store(ds)
        elapsed = time.monotonic() - start
    finally:
        assoc.release()
    assert int(rsp.Status) == StoreStatus.CANNOT_UNDERSTAND
    assert elapsed < REFUSAL_BEFORE_DECODING_S
    [refusal] = [e for e in node.db.events("refused") if e.sop_instance_uid == ds.SOPInstanceUID]
    assert "too large" in (refusal.detail or "")
    assert echo_ok(node)
