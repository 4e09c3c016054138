"""Pure tile geometry: which tile sizes a U-Net takes and how tiles, chunks and mirrored borders
cover a slide. No torch, no I/O.
"""
