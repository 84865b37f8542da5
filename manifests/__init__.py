"""Parquet manifests of a pipeline run and the tools that read them.

``schema`` defines the video and clip tables. ``checks`` proves that manifests, shards and the
statistics file agree; ``summary`` and ``report`` show what was kept and dropped and why (tables,
JSON, a self-contained HTML page); ``rethreshold`` answers "what would other thresholds keep?"
from the recorded scores. ``python -m manifests.audit OUT`` ties them together on the command line.
"""
