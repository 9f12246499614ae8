"""Video → keypoint recordings at the site (``semiofed site extract``).

Modules: :mod:`.video` (finding, probing, hashing and threaded decoding of videos),
:mod:`.backends` (MediaPipe Holistic and Tasks landmarkers), :mod:`.roi` (region of
interest), :mod:`.smoothing` (temporal smoothing and flagged gap filling), :mod:`.flow`
(optical-flow motion energy per body region), :mod:`.preview` (de-identified skeleton
preview), :mod:`.pipeline` (workers, chunks, manifest, resumability).
"""
