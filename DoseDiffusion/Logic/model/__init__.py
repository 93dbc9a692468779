"""The Any2Any diffusion transformer, its codecs, objective, sampler and pipeline."""
