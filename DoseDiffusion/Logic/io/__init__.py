"""Readers and writers: DICOM RT, NRRD/NIfTI with a JSON sidecar, GDP-HMM npz."""
