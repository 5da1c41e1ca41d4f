"""Driving experiments: one scenario run (`runner`), a sweep of runs (`sweep`), the
environment a run records (`environment`) and rate-accuracy curves (`rate_accuracy`)."""
