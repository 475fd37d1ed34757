"""Training: the registered Model Garden experiment, data preparation and export.

Importing :mod:`busdet.training.experiment` registers the experiment
``busi_retinanet_mobilenetv2`` and its task with Model Garden's factories.
"""
