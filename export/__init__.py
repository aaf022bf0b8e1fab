"""SavedModel export: JPEG-bytes serving signature, warmup records, atomic versions."""
