"""The Activation Difference Lens: differences, readouts, steering, diagnostics, artifacts."""
