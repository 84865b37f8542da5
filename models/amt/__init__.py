"""AMT-S (MCG-NKU/AMT), the frame interpolator behind VBench's motion_smoothness, key for key with
the official ``amt-s.pth``: ``flow`` (warping, correlation pyramid), ``encoders``, ``decoders``,
``update`` (the correlation-guided refinement), ``network`` (the model and ``load_amt_s``)."""
from models.amt.network import AmtS, load_amt_s

__all__ = ["AmtS", "load_amt_s"]
