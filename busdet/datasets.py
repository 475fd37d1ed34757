"""The public datasets the shipped model was trained on: names, citations, licences.

    citation_line("busbra")   # -> 'BUS-BRA: W. Gomez-Flores, ... doi:10.1002/mp.16812 (MIT-style ...)'

Both licences ask that the source be cited wherever the data or a model trained on it
is described: the README, the model card, ``model_info.json`` and the page's About box
take the text from here. A dataset trained on under another name (your own) has no
entry and is listed by name only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class DatasetSource:
    """Where a training dataset comes from and on what terms."""

    title: str
    citation: str
    licence: str
    centre: str


KNOWN_DATASETS: Dict[str, DatasetSource] = {
    "busi": DatasetSource(
        title="BUSI (Breast Ultrasound Images Dataset)",
        citation='W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, "Dataset of breast ultrasound images", '
                 "Data in Brief 28 (2020) 104863, doi:10.1016/j.dib.2019.104863",
        licence="CC BY 4.0",
        centre="one hospital in Cairo, Egypt; 2018"),
    "busbra": DatasetSource(
        title="BUS-BRA",
        citation='W. Gomez-Flores, M. J. Gregorio-Calas, W. C. A. Pereira, "BUS-BRA: A breast ultrasound '
                 'dataset for assessing computer-aided diagnosis systems", Medical Physics 51 (2024) '
                 "3110-3123, doi:10.1002/mp.16812; data: doi:10.5281/zenodo.8231412",
        licence="MIT-style, on condition that the article is cited",
        centre="National Institute of Cancer, Rio de Janeiro, Brazil; four scanners"),
}


def citation_line(name: str) -> str:
    """One line naming a training dataset, with its citation and licence when known."""
    source = KNOWN_DATASETS.get(name)
    if source is None:
        return name
    return f"{source.title}: {source.citation} ({source.licence})"
