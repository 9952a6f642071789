"""samfed: SAM-guided federated semi-supervised segmentation with an edge deployment pipeline.

Importing `samfed` (and `samfed.errors`, `samfed.preprocess`, `samfed.data.io`) never imports torch,
so the torch-free edge runtime can share these definitions.
"""

__version__ = "0.1.0"
