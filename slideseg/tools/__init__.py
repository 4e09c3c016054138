"""Tools around a mask: evaluation, polygon tracing and GeoJSON, previews, synthetic slides, and the
measured seam error of a model.
"""
