"""The napari face of napari-msunet: reader, widgets and sample data.

This is the only package that imports napari or Qt; everything it does is delegated to the
headless core.
"""
