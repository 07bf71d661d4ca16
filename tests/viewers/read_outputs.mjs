// Reads SpineNode's SEG and SR with the code OHIF uses: @cornerstonejs/adapters (SEG -> labelmap through
// cornerstone3D's image cache, TID 1500 measurement-report walk) on top of dcmjs.
//
//   node read_outputs.mjs SOURCE.dcm SEG.dcm SR.dcm OUT_DIR
//
// Writes OUT_DIR/labelmap-<layer>.u8 (rows x columns, one byte per pixel: the segment number, 0 for none;
// overlapping segments come out in separate layers) and prints one JSON object on stdout with the
// segments' metadata, the layers and the SR's measurement groups. Python checks the content.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import * as core from '@cornerstonejs/core';
import { adaptersSEG, adaptersSR } from '@cornerstonejs/adapters';
import dcmjs from 'dcmjs';

const SOURCE_IMAGE_ID = 'spinenode:source';
// What OHIF's metadata provider assumes for a projection image without Image Orientation/Position (Patient).
const DEFAULT_ORIENTATION = [1, 0, 0, 0, 1, 0];
const DEFAULT_POSITION = [0, 0, 0];

const [sourcePath, segPath, srPath, outDir] = process.argv.slice(2);

function readDataset(path) {
  const bytes = readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dicom = dcmjs.data.DicomMessage.readFile(buffer);
  const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicom.dict);
  dataset._meta = dcmjs.data.DicomMetaDictionary.namifyDataset(dicom.meta);
  return { buffer, dataset };
}

function first(value) {
  return Array.isArray(value) ? value[0] : value;
}

// The metadata modules cornerstone3D asks for, built from the source's own header as OHIF does.
function sourceModules(ds) {
  const spacing = (ds.PixelSpacing ?? ds.ImagerPixelSpacing ?? [1, 1]).map(Number);
  const orientation = (ds.ImageOrientationPatient ?? DEFAULT_ORIENTATION).map(Number);
  return {
    instance: ds,
    generalImageModule: { sopInstanceUID: ds.SOPInstanceUID, instanceNumber: Number(ds.InstanceNumber ?? 1) },
    generalSeriesModule: {
      modality: ds.Modality,
      seriesInstanceUID: ds.SeriesInstanceUID,
      studyInstanceUID: ds.StudyInstanceUID,
    },
    imagePlaneModule: {
      frameOfReferenceUID: ds.FrameOfReferenceUID,
      rows: ds.Rows,
      columns: ds.Columns,
      imageOrientationPatient: orientation,
      rowCosines: orientation.slice(0, 3),
      columnCosines: orientation.slice(3, 6),
      imagePositionPatient: (ds.ImagePositionPatient ?? DEFAULT_POSITION).map(Number),
      pixelSpacing: spacing,
      rowPixelSpacing: spacing[0],
      columnPixelSpacing: spacing[1],
    },
    imagePixelModule: {
      rows: ds.Rows,
      columns: ds.Columns,
      bitsAllocated: ds.BitsAllocated,
      bitsStored: ds.BitsStored,
      highBit: ds.HighBit,
      pixelRepresentation: ds.PixelRepresentation,
      samplesPerPixel: ds.SamplesPerPixel,
      photometricInterpretation: ds.PhotometricInterpretation,
    },
  };
}

const source = readDataset(sourcePath).dataset;
const modules = { [SOURCE_IMAGE_ID]: sourceModules(source) };
const extra = new Map(); // what the adapter registers itself (the SEG instance)
const metadataProvider = {
  get(type, imageId) {
    return extra.get(`${type}|${imageId}`) ?? modules[imageId]?.[type];
  },
  add(imageId, type, value) {
    extra.set(`${type}|${imageId}`, value);
  },
};
core.metaData.addProvider((type, imageId) => metadataProvider.get(type, imageId), 10000);

// --- SEG -> labelmap (OHIF: cornerstone-dicom-seg extension, createFromDICOMSegBuffer) -------------------
const seg = readDataset(segPath);
const result = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(
  [SOURCE_IMAGE_ID],
  seg.buffer,
  { metadataProvider },
);
const layers = (Array.isArray(result.labelMapImages[0]) ? result.labelMapImages : [result.labelMapImages]).map(
  (images, index) => {
    const [image] = images;
    const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
    const file = join(outDir, `labelmap-${index}.u8`);
    writeFileSync(file, Buffer.from(Uint8Array.from(data)));
    return { file, rows: image.rows, columns: image.columns, referencedImageId: image.referencedImageId };
  },
);
const segments = (result.segMetadata.data ?? [])
  .map((segment, number) => (segment ? { number, label: segment.SegmentLabel } : null))
  .filter(Boolean);

// --- SR: the TID 1500 measurement-report walk of the adapters --------------------------------------------
// Our segment groups are planar ROIs (TID 1410) whose image region is a closed POLYLINE on the source, tied
// to the SEG segment by the Tracking UID; the adapter's getToolClass hook receives every group it parsed
// (tracking identifier found), and this reader collects what the group says.
const sr = readDataset(srPath).dataset;
const reader = {
  toolType: 'SpineNodeSegmentGroup',
  getMeasurementData(group, _sopMap, _metadata, trackingIdentifier) {
    const items = [].concat(group.ContentSequence ?? []);
    const measurements = items
      .filter((item) => item.ValueType === 'NUM')
      .map((item) => ({
        name: first(item.ConceptNameCodeSequence).CodeMeaning,
        value: Number(first(item.MeasuredValueSequence).NumericValue),
        unit: first(first(item.MeasuredValueSequence).MeasurementUnitsCodeSequence).CodeValue,
      }));
    const uidItem = items.find((item) => item.ValueType === 'UIDREF');
    const region = items.find((item) => item.ValueType === 'SCOORD');
    const regionImage = region ? first(first([].concat(region.ContentSequence ?? [])).ReferencedSOPSequence) : null;
    return {
      trackingIdentifier,
      trackingUID: uidItem ? uidItem.UID : null,
      region: region
        ? {
            graphicType: region.GraphicType,
            points: [].concat(region.GraphicData ?? []).length / 2,
            sopInstanceUID: regionImage?.ReferencedSOPInstanceUID ?? null,
          }
        : null,
      measurements,
    };
  },
};
const toolState = adaptersSR.Cornerstone3D.MeasurementReport.generateToolState(sr, {}, core.metaData, {
  getToolClass: () => reader,
});

console.log(
  JSON.stringify({
    segments,
    layers,
    overlapping: Boolean(result.overlappingSegments),
    measurementGroups: toolState[reader.toolType] ?? [],
  }),
);
