"""Analysis of stored records: the one rule by which every claim is judged (:mod:`.compare`).

Reports, the demo's verdict, the notebooks and the robustness findings all call
:func:`~jkt_lab.analysis.compare.paired_compare`, so a claim reads the same everywhere.
"""
from .compare import Comparison, Setting, paired_compare, paired_differences

__all__ = ["Comparison", "Setting", "paired_compare", "paired_differences"]
