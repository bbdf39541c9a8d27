"""Why the model answered as it did: Grad-CAM heatmaps and measures of the lesion in the photo."""
