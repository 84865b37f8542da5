"""Every network that loads an official checkpoint, its loader, the weights registry and the CPU runtime.

One module per network family; each loader is the one place that knows its checkpoint's format and
its random-weights mode (``"random"``: the official architecture with seeded random weights, for
tests and smoke runs, announced loudly). Nothing here imports the job (``pipeline``), the filters or
the trainer: those build on these networks.

- ``models.weights``: the registry of every model file (``python -m models.weights list|verify|fetch``).
- ``models.onnx_cpu``: a module exported once to ONNX and run on ONNX Runtime (CPU).
- ``models.liveportrait``: LivePortrait's networks (motion extractor, renderer modules).
- ``models.syncnet``: syncnet_python's SyncNet.
- ``models.audio_encoder``, ``models.audio_inputs``: wav2vec2 / HuBERT speech features per video frame,
  with the inputs the checkpoint's feature extractor expects.
- ``models.face_detectors``: OpenCV Haar and InsightFace SCRFD face detectors.
- ``models.face_landmarks``, ``models.face_identity``, ``models.dlib_models``: landmarks for the
  crops and face descriptors for the identity split.
- ``models.quality``: pyiqa's no-reference quality metrics (Q-Align and lighter ones).
- ``models.i3d``, ``models.inception_fid``, ``models.amt``: the benchmark's FVD, FID and
  smoothness networks (I3D, Inception-v3, the AMT-S frame interpolator).
"""
