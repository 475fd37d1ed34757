"""Dataset citations: every known training dataset is cited with its licence."""

from busdet.datasets import KNOWN_DATASETS, citation_line


def test_known_datasets_are_cited_with_doi_and_licence():
    for name, source in KNOWN_DATASETS.items():
        line = citation_line(name)
        assert "doi:" in line and source.licence in line and source.title in line


def test_an_unknown_dataset_is_named_only():
    assert citation_line("my_clinic") == "my_clinic"
