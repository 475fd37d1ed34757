"""busdet: find benign and malignant lesions in breast ultrasound images.

The package holds all the logic; ``app.py``, ``predict.py`` and ``tools/*`` are
thin command lines over it:

- :mod:`busdet.boxes`        the one box record and its conversions
- :mod:`busdet.label_map`    the label map reader (class ids everywhere)
- :mod:`busdet.files`        atomic writes, the CSV and JSON forms, safe names, output checks
- :mod:`busdet.images`       robust image reading and writing (PNG, MP4), the Scan every reader returns
- :mod:`busdet.dicom`        DICOM frames as RGB, the ultrasound region and its mm per pixel, nothing else
- :mod:`busdet.scans`        any input file (image or DICOM) as a Scan: what the page and the CLI read
- :mod:`busdet.dicom_out`    results as DICOM for a PACS: a TID 1500 Structured Report, an annotated Secondary Capture
- :mod:`busdet.dicom_node`   the DICOM node: ultrasound in by C-STORE, those results out, queued on disk
- :mod:`busdet.annotations`  masks to boxes, the annotation CSV, the one COCO builder
- :mod:`busdet.phantoms`     synthetic ultrasound-like images for tests and demos
- :mod:`busdet.dicom_phantoms`  synthetic DICOM files (single frames, cine loops, fake PHI) from them
- :mod:`busdet.inference`    the SavedModel contract, one ``detect`` function, ``model_info.json``
- :mod:`busdet.results`      the one per-image record and the function that makes it (page and CLI)
- :mod:`busdet.tables`       ``predictions.csv`` and ``images.csv`` from those records
- :mod:`busdet.downloads`    the page's in-memory PNG, MP4, JSON and ZIP
- :mod:`busdet.batch`        ``predict.py``'s folder run
- :mod:`busdet.drawing`      the one drawing function for truth and predictions
- :mod:`busdet.cli`          the common ending of every command line
- :mod:`busdet.evaluation`   COCO and image-level metrics, plots, gallery, measuring an exported model
- :mod:`busdet.training`     Model Garden experiment, TFRecords, training, export
"""

__version__ = "0.1.0"
