"""Headless training, evaluation and data generation for DoseDiffusion (``dosediffusion-train``)."""
