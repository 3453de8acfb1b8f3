// Written by the build: the whole book as a PDF, relative to _static/ (null: not built).
window.BNBOOK_PDF = null;
