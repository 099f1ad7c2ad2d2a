"""Analyses behind the paper's figures, each a function on in-memory models and datasets plus a
plot function writing ``NAME.png`` and ``NAME.json`` (the numbers behind the plot):

- :func:`eps_sweep` / :func:`plot_eps_sweep`: robust accuracy at eps 1, 2, 4/255 (Fig. 6);
- :func:`training_curves` / :func:`plot_curves`: loss and accuracy against epochs (Fig. 7);
- :func:`interpolation` / :func:`plot_interpolation`: weight interpolation (Fig. 8);
- :func:`feature_analysis` / :func:`plot_features`: t-SNE and cosine similarity (Fig. 9);
- :func:`time_cost` / :func:`plot_time_cost`: training and evaluation time (Table VIII);
- :func:`gallery` / :func:`plot_gallery`: example images, prompts and predictions;
- :func:`run_sanity`: the gradient-masking checks (Carlini et al. 2019), table, JSON and PNG.

The command line is ``mmcoa analyze <kind>`` (:mod:`mmcoa.analysis.commands`).
"""

from mmcoa.analysis.curves import plot_curves, training_curves
from mmcoa.analysis.eps_sweep import eps_sweep, plot_eps_sweep
from mmcoa.analysis.features import (
    attacked_features,
    feature_analysis,
    mean_cosine_similarity,
    plot_features,
    tsne,
)
from mmcoa.analysis.gallery import gallery, plot_gallery
from mmcoa.analysis.interpolation import interpolate_state_dicts, interpolation, plot_interpolation
from mmcoa.analysis.runs import read_runs
from mmcoa.analysis.sanity import run_sanity, sanity_checks
from mmcoa.analysis.timecost import plot_time_cost, time_cost

__all__ = [
    "attacked_features",
    "eps_sweep",
    "feature_analysis",
    "gallery",
    "interpolate_state_dicts",
    "interpolation",
    "mean_cosine_similarity",
    "plot_curves",
    "plot_eps_sweep",
    "plot_features",
    "plot_gallery",
    "plot_interpolation",
    "plot_time_cost",
    "read_runs",
    "run_sanity",
    "sanity_checks",
    "time_cost",
    "training_curves",
    "tsne",
]
