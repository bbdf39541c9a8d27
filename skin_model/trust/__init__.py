"""When to trust an answer: calibration, the inconclusive threshold and the out-of-distribution check
(applying them, and fitting them on arrays of validation outputs; `training.fit_trust` runs the fit)."""
