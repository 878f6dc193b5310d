"""Organisms, grading, evaluation runs, the store, reports and the viewer."""
