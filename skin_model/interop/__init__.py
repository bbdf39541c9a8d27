"""Reports for other systems and people: the PDF report and the FHIR R4 DiagnosticReport."""
