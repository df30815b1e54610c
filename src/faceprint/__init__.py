"""faceprint: offline face detection, verification and identification."""
