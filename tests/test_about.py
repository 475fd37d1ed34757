"""The About box describes the loaded model from its own model_info.json."""

from busdet.about import model_markdown, recorded_test_metrics, training_data_markdown
from busdet.datasets import citation_line


def test_training_data_cites_every_recorded_dataset():
    info = {"trained_on": [{"name": n, "citation": citation_line(n)} for n in ("busi", "busbra")]}
    text = training_data_markdown(info)
    assert "BUSI" in text and "BUS-BRA" in text and text.count("doi:") >= 2
    assert "Not recorded" in training_data_markdown({})


def test_metrics_table_has_a_column_per_dataset_and_reads_older_flat_records():
    info = {"test_metrics": {"busi": {"AP50_lesion": 0.85, "mAP50": None, "images": 100},
                             "pooled": {"AP50_lesion": 0.9, "mAP50": 0.7, "images": 337}}}
    table = recorded_test_metrics(info)
    assert list(table.columns) == ["busi", "pooled"]
    assert table.loc["AP50_lesion", "busi"] == "0.850" and table.loc["mAP50", "busi"] == "n/a"
    assert table.loc["images", "pooled"] == "337"
    flat = recorded_test_metrics({"test_metrics": {"AP50_lesion": 0.8}})
    assert list(flat.columns) == ["test"] and flat.loc["AP50_lesion", "test"] == "0.800"
    assert recorded_test_metrics({}) is None


def test_model_paragraph_says_what_the_backbone_started_from():
    digest = "ab" * 32
    text = model_markdown({"backbone_init": {"weights": "imagenet", "file": "w.h5", "sha256": digest}})
    assert "ImageNet" in text and "w.h5" in text and digest in text
    assert "random initialisation" in model_markdown({"backbone_init": {"weights": "none"}})
    assert "not recorded" in model_markdown({})


def test_model_paragraph_says_when_the_graph_reads_the_image_mirrored_too():
    assert "mirrored" in model_markdown({"flip_tta": True})
    assert "mirrored" not in model_markdown({"flip_tta": False}) and "mirrored" not in model_markdown({})
