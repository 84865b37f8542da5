"""Stage 2: the audio-to-motion diffusion transformer, trained from the pipeline's shards.

Read in this order: ``model`` (the denoiser), ``diffusion`` (schedule, samplers, sliding-window
``generate``), ``losses``, ``normalize`` (stats -> normalised vectors), ``data`` (streaming
windows from WebDataset shards), ``checkpoint`` (save/resume, ``load_for_inference``) and ``run``
(the loop; ``python -m training.run``). Sampling, evaluation and export build on ``model``,
``diffusion``, ``normalize`` and ``checkpoint``.
"""
