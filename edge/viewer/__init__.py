"""`samfed view`: a local web viewer over the torch-free edge runtime (Starlette + uvicorn).

Modules: `upload` (image bytes -> RGB array, with limits), `segment` (one image -> the page's
probability map and statistics), `gallery` (a `samfed predict` output folder, files served only
from inside it), `card` (the model card from the export manifest), `app` (routes and security
headers). The page itself (static/) is plain HTML/JS/CSS shipped in the package; nothing is loaded
from the internet.
"""
