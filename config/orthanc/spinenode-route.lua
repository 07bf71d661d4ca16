-- Orthanc -> SpineNode routing (load it with the "LuaScripts" configuration key).
--
-- Forwards every CR or DX radiograph that a modality sends to Orthanc over DICOM to SpineNode, declared
-- as "spinenode" in "DicomModalities". SpineNode's results come back as SEG, SR and SC (Modality OT)
-- objects, none of which is forwarded, so nothing loops; instances uploaded through the REST API are
-- left to explicit store jobs (POST /modalities/spinenode/store).

local SPINENODE_MODALITY = 'spinenode'

local RADIOGRAPH_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.1'] = true,      -- Computed Radiography Image Storage
  ['1.2.840.10008.5.1.4.1.1.1.1'] = true,    -- Digital X-Ray Image Storage - For Presentation
  ['1.2.840.10008.5.1.4.1.1.1.1.1'] = true,  -- Digital X-Ray Image Storage - For Processing
}

local RADIOGRAPH_MODALITIES = { CR = true, DX = true }

function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RequestOrigin'] ~= 'DicomProtocol' then
    return
  end
  if RADIOGRAPH_MODALITIES[tags['Modality']] and RADIOGRAPH_SOP_CLASSES[metadata['SopClassUid']] then
    SendToModality(instanceId, SPINENODE_MODALITY)
  end
end
