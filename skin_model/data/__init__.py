"""HAM10000: reading a local copy, fetching it, lesion-grouped splits and the image transforms."""
