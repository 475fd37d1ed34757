"""busdet: find benign and malignant lesions in breast ultrasound images.

The package holds all the logic; ``app.py``, ``predict.py`` and ``tools/*`` are
thin command lines over it:

- :mod:`busdet.boxes`        the one box record and its conversions
- :mod:`busdet.label_map`    the label map reader (class ids everywhere)
- :mod:`busdet.images`       robust image reading, atomic writes
- :mod:`busdet.annotations`  masks to boxes, annotation CSV / COCO I/O
- :mod:`busdet.phantoms`     synthetic ultrasound-like images for tests and demos
- :mod:`busdet.inference`    the SavedModel contract, one ``detect`` function
- :mod:`busdet.drawing`      the one drawing function for truth and predictions
- :mod:`busdet.evaluation`   COCO and image-level metrics, plots, gallery
- :mod:`busdet.training`     Model Garden experiment, TFRecords, training, export
"""

__version__ = "0.1.0"
