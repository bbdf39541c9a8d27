"""Input and output of photos: decoding every accepted format (DICOM included) into checked RGB images."""
