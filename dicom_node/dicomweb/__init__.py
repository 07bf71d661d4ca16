"""DICOMweb STOW-RS (PS3.18 section 10.5): the client that delivers results to STOW-RS destinations
(``dicom_node.dicomweb.client``) and the multipart/related and JSON encoding it shares with the node's own
STOW-RS endpoint (``dicom_node.dicomweb.message``, ``dicom_node.http.stow``)."""
