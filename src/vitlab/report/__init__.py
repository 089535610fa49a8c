"""Figures (matplotlib, PNG + SVG side by side) and static HTML reports (Jinja2) for runs, studies, inspections
and the demo.

Low in the layer order: this package imports only :mod:`vitlab.errors`, matplotlib, Jinja2, numpy, PIL and PyYAML,
and its figure functions take plain data (arrays, dicts, metrics rows), so any command can draw with it.
"""
from vitlab.report.confusion import confusion_figure, read_confusion
from vitlab.report.curves import read_metrics, training_curves
from vitlab.report.inspection import distance_figure, filters_figure, rollout_figure, similarity_figure
from vitlab.report.pages import build_report, detect_kind, run_figures
from vitlab.report.study import plot_study
from vitlab.report.tensorboard import log_figures

__all__ = [
    "build_report",
    "confusion_figure",
    "detect_kind",
    "distance_figure",
    "filters_figure",
    "log_figures",
    "plot_study",
    "read_confusion",
    "read_metrics",
    "rollout_figure",
    "run_figures",
    "similarity_figure",
    "training_curves",
]
