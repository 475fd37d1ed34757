"""The registered experiment: RetinaNet, MobileNetV2 backbone, separable FPN, 3 classes.

Everything model-related is Model Garden's (``official.vision``): backbone, FPN
decoder, RetinaNet head, anchors, focal/Huber losses, detection generator (NMS),
COCO evaluator, orbit trainer, weighted sampling of the training sources. This
module adds only what ultrasound needs on top: augmentation for other scanners and
clinics (:mod:`busdet.training.augment`: gain, TGC, speckle, blur, resolution,
zoom-out, burned-in overlays; optionally copy-paste of training lesions, which adds
boxes and classes) applied to the decoded image before Model Garden's
own parser does its scale jitter, crop and anchor labelling, and validation in the
model card's terms per dataset.

Stage configs in ``configs/*.yaml`` override this base; see ``tools/train.py``.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import tensorflow as tf
from official.core import config_definitions as cfg
from official.core import exp_factory, task_factory
from official.modeling import hyperparams, optimization
from official.vision.configs import backbones, common, decoders
from official.vision.configs import retinanet as retinanet_cfg
from official.common import dataset_fn as dataset_fn_lib
from official.vision.dataloaders import input_reader, input_reader_factory, retinanet_input, tf_example_decoder
from official.vision.ops import preprocess_ops
from official.vision.tasks import retinanet as retinanet_task

from busdet.training.augment import UltrasoundAugmentation, augment_example_tf, lesion_bank_for
from busdet.training.sampling import Sampling
from busdet.training.validation import SELECTION_METRIC, BusiCocoEvaluator

EXPERIMENT_NAME = "busi_retinanet_mobilenetv2"
NUM_CLASSES = 3  # background, benign, malignant (ids from label_map.pbtxt)


@dataclasses.dataclass
class Photometric(hyperparams.Config):
    """Intensity augmentation for B-mode images (geometry is left to the parser)."""

    probability: float = 0.8
    brightness_delta: float = 0.1  # added, in [0, 1] intensity units
    contrast_range: List[float] = dataclasses.field(default_factory=lambda: [0.75, 1.3])
    gamma_range: List[float] = dataclasses.field(default_factory=lambda: [0.7, 1.4])
    speckle_sigma_max: float = 0.15  # std of multiplicative unit-mean noise


@dataclasses.dataclass
class UltrasoundDataConfig(retinanet_cfg.DataConfig):
    # The first model's intensity augmentation (kept so its runs reload); model v2 uses
    # ``augmentation``, which covers it and adds scanners' and clinics' looks.
    photometric: Optional[Photometric] = None
    augmentation: Optional[UltrasoundAugmentation] = None
    # Resolved into Model Garden's ``input_path``/``weights`` dicts by busdet.training.run.
    sampling: Sampling = dataclasses.field(default_factory=Sampling)


@dataclasses.dataclass
class BackboneInit(hyperparams.Config):
    """Where the backbone's first weights came from (``--init``), carried from stage to stage.

    ``weights``: ``none`` (random), ``imagenet``, or ``unknown`` (started from a checkpoint whose
    run recorded nothing); ``file`` and ``sha256`` name the
    weights file (its name only: the user's folders are nobody's business).
    """

    weights: str = "none"
    file: str = ""
    sha256: str = ""


@dataclasses.dataclass
class UltrasoundRetinaNetTaskConfig(retinanet_cfg.RetinaNetTask):
    train_data: UltrasoundDataConfig = dataclasses.field(
        default_factory=lambda: UltrasoundDataConfig(is_training=True))
    validation_data: UltrasoundDataConfig = dataclasses.field(
        default_factory=lambda: UltrasoundDataConfig(is_training=False))
    # Label-map names in id order (1, 2, ...): validation reports AP per class by name.
    class_names: List[str] = dataclasses.field(default_factory=lambda: ["benign", "malignant"])
    # Training datasets in ``--data`` order: validation reports each one (``busi/AP50_lesion``)
    # beside the pooled numbers, telling them apart by source id (data.SOURCE_ID_STRIDE).
    dataset_names: List[str] = dataclasses.field(default_factory=list)
    # Stop once the best checkpoint (trainer.best_checkpoint_eval_metric) is this many
    # steps old: training ends when validation stops improving, not at a step count.
    # 0: run to trainer.train_steps.
    early_stop_patience_steps: int = 0
    backbone_init: BackboneInit = dataclasses.field(default_factory=BackboneInit)


def apply_photometric(image: tf.Tensor, params: Photometric, seed: Optional[int] = None) -> tf.Tensor:
    """Random brightness, contrast, gamma and speckle on a uint8 image ``[H, W, C]``.

    The same noise field is used for every channel: BUSI frames are gray images
    stored as RGB, and colour noise would teach the model a cue that does not exist.
    """
    def distort(pixels):
        x = tf.cast(pixels, tf.float32) / 255.0
        x = tf.clip_by_value(x + tf.random.uniform([], -params.brightness_delta, params.brightness_delta), 0, 1)
        mean = tf.reduce_mean(x)
        x = tf.clip_by_value((x - mean) * tf.random.uniform([], *params.contrast_range) + mean, 0, 1)
        x = tf.pow(x, tf.random.uniform([], *params.gamma_range))
        sigma = tf.random.uniform([], 0.0, params.speckle_sigma_max)
        speckle = 1.0 + sigma * tf.random.normal(tf.concat([tf.shape(x)[:2], [1]], 0))
        x = tf.clip_by_value(x * speckle, 0, 1)
        return tf.cast(tf.round(x * 255.0), tf.uint8)

    return tf.cond(tf.random.uniform([]) < params.probability, lambda: distort(image), lambda: image)


class UltrasoundParser(retinanet_input.Parser):
    """Model Garden's RetinaNet parser with ultrasound augmentation first in training.

    :func:`apply_photometric` (the first model's) and/or
    :func:`busdet.training.augment.augment_example_tf` (copy-paste, scanner looks, field
    of view, burned-in overlays) run on the decoded image before the parser's own flip,
    scale jitter, crop and anchor labelling. With ``augmentation`` the horizontal flip
    moves ahead of it, so that burned-in text and pictograms are never mirrored.
    Pasted lesions come with their classes and a not-crowd flag, so that Model
    Garden's crowd filter keeps them.
    """

    def __init__(self, photometric: Optional[Photometric] = None,
                 augmentation: Optional[UltrasoundAugmentation] = None, **kwargs):
        super().__init__(**kwargs)
        self._photometric = photometric
        self._augmentation = augmentation
        self._lesion_bank = lesion_bank_for(augmentation)  # loaded once, shared by the map's threads
        self._flip_before_augmentation = augmentation is not None and self._aug_rand_hflip
        if self._flip_before_augmentation:
            self._aug_rand_hflip = False

    def _parse_train_data(self, data, anchor_labeler=None, input_anchor=None):
        image, boxes = data["image"], data["groundtruth_boxes"]
        if self._photometric is not None:
            image = apply_photometric(image, self._photometric)
        if self._augmentation is not None:
            if self._flip_before_augmentation:
                image, boxes, _ = preprocess_ops.random_horizontal_flip(image, boxes)
            image, boxes, classes = augment_example_tf(image, boxes, data["groundtruth_classes"], self._augmentation,
                                                       self._lesion_bank)
            is_crowd = data["groundtruth_is_crowd"]
            pasted = tf.shape(classes)[0] - tf.shape(is_crowd)[0]
            data = dict(data, groundtruth_classes=classes,
                        groundtruth_is_crowd=tf.concat([is_crowd, tf.zeros([pasted], tf.bool)], 0))
        data = dict(data, image=image, groundtruth_boxes=boxes)
        return super()._parse_train_data(data, anchor_labeler, input_anchor)


@task_factory.register_task_cls(UltrasoundRetinaNetTaskConfig)
class UltrasoundRetinaNetTask(retinanet_task.RetinaNetTask):
    """Model Garden's RetinaNet task reading TFRecords through :class:`UltrasoundParser`.

    ``build_inputs`` differs because the base class builds its parser inline, so the
    parser class cannot be swapped without rebuilding the (short) input chain;
    ``build_metrics`` swaps in :class:`busdet.training.validation.BusiCocoEvaluator`,
    which adds the model card's metrics to Model Garden's COCO numbers.
    """

    def build_metrics(self, training: bool = True):
        metrics = super().build_metrics(training)
        if not training and self.task_config.use_coco_metrics:
            self.coco_metric = BusiCocoEvaluator(
                class_names=self.task_config.class_names, dataset_names=self.task_config.dataset_names,
                annotation_file=self.task_config.annotation_file,
                include_mask=False, per_category_metrics=False,
                max_num_eval_detections=self.task_config.max_num_eval_detections)
        return metrics

    def build_inputs(self, params: UltrasoundDataConfig, input_context=None):
        model = self.task_config.model
        decoder = tf_example_decoder.TfExampleDecoder(
            regenerate_source_id=params.decoder.get().regenerate_source_id)
        parser = UltrasoundParser(
            photometric=params.photometric if params.is_training else None,
            augmentation=params.augmentation if params.is_training else None,
            output_size=model.input_size[:2], min_level=model.min_level, max_level=model.max_level,
            num_scales=model.anchor.num_scales, aspect_ratios=model.anchor.aspect_ratios,
            anchor_size=model.anchor.anchor_size, dtype=params.dtype,
            match_threshold=params.parser.match_threshold,
            unmatched_threshold=params.parser.unmatched_threshold,
            box_coder_weights=model.detection_generator.box_coder_weights,
            aug_type=params.parser.aug_type, aug_rand_hflip=params.parser.aug_rand_hflip,
            aug_rand_jpeg=params.parser.aug_rand_jpeg,
            aug_scale_min=params.parser.aug_scale_min, aug_scale_max=params.parser.aug_scale_max,
            skip_crowd_during_training=params.parser.skip_crowd_during_training,
            max_num_instances=params.parser.max_num_instances,
            pad=params.parser.pad, keep_aspect_ratio=params.parser.keep_aspect_ratio)
        reader = input_reader_factory.input_reader_generator(
            params, dataset_fn=dataset_fn_lib.pick_dataset_fn(params.file_type),
            decoder_fn=decoder.decode, combine_fn=input_reader.create_combine_fn(params),
            parser_fn=parser.parse_fn(params.is_training))
        return reader.read(input_context=input_context)


@exp_factory.register_config_factory(EXPERIMENT_NAME)
def busi_retinanet_mobilenetv2() -> cfg.ExperimentConfig:
    """The seed's detector, rebuilt from Model Garden parts (see MODEL_CARD.md).

    MobileNetV2 -> FPN levels 3-7, 128 channels, separable convs -> shared
    RetinaNet head of 4 separable 128-channel convs; anchors 3 ratios x 2 scales,
    size 4; focal loss gamma 2 alpha 0.25, Huber (smooth L1) box loss; NMS IoU 0.6,
    60 detections, class-agnostic so that a lesion gets one box, not a benign and a
    malignant one. Paths and schedule come from the stage YAML files.
    """
    input_size = 640
    return cfg.ExperimentConfig(
        runtime=cfg.RuntimeConfig(mixed_precision_dtype="float32"),
        task=UltrasoundRetinaNetTaskConfig(
            model=retinanet_cfg.RetinaNet(
                num_classes=NUM_CLASSES,
                input_size=[input_size, input_size, 3],
                min_level=3, max_level=7,
                backbone=backbones.Backbone(type="mobilenet", mobilenet=backbones.MobileNet(
                    model_id="MobileNetV2", filter_size_scale=1.0)),
                decoder=decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=128, use_separable_conv=True)),
                head=retinanet_cfg.RetinaNetHead(num_convs=4, num_filters=128, use_separable_conv=True),
                anchor=retinanet_cfg.Anchor(num_scales=2, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4.0),
                detection_generator=retinanet_cfg.DetectionGenerator(
                    nms_iou_threshold=0.6, max_num_detections=60, pre_nms_score_threshold=0.01,
                    use_class_agnostic_nms=True),
                norm_activation=common.NormActivation(activation="relu6", use_sync_bn=False,
                                                      norm_momentum=0.99, norm_epsilon=1e-3)),
            losses=retinanet_cfg.Losses(focal_loss_alpha=0.25, focal_loss_gamma=2.0,
                                        huber_loss_delta=0.1, box_loss_weight=50, l2_weight_decay=4e-5),
            train_data=UltrasoundDataConfig(
                is_training=True, global_batch_size=8, dtype="float32", shuffle_buffer_size=1000,
                parser=retinanet_cfg.Parser(aug_rand_hflip=True, aug_scale_min=0.75, aug_scale_max=1.25),
                augmentation=UltrasoundAugmentation()),
            validation_data=UltrasoundDataConfig(is_training=False, global_batch_size=4, dtype="float32",
                                                 drop_remainder=False),
            init_checkpoint_modules="all",
            export_config=retinanet_cfg.ExportConfig(output_normalized_coordinates=True)),
        trainer=cfg.TrainerConfig(
            train_steps=2000, validation_steps=-1, validation_interval=100,
            steps_per_loop=100, summary_interval=100, checkpoint_interval=100,
            # The steps of a loop as a Python loop, not one TensorFlow while loop: Python's signal
            # handlers run only between calls into TensorFlow, so with the while loop a SIGTERM or
            # Ctrl-C waited for the loop's end (250 steps, 5 minutes at 640 on 2 cores). The cost is
            # one Python call per step, against about a second of work per step at 640.
            train_tf_while_loop=False,
            max_to_keep=2, best_checkpoint_export_subdir="best",
            best_checkpoint_eval_metric=SELECTION_METRIC, best_checkpoint_metric_comp="higher",
            optimizer_config=optimization.OptimizationConfig({
                "optimizer": {"type": "sgd", "sgd": {"momentum": 0.9}},
                "learning_rate": {"type": "cosine", "cosine": {"initial_learning_rate": 0.04,
                                                               "decay_steps": 2000}},
                "warmup": {"type": "linear", "linear": {"warmup_steps": 150,
                                                        "warmup_learning_rate": 0.004}},
            })),
        restrictions=["task.train_data.is_training != None",
                      "task.validation_data.is_training != None"])
