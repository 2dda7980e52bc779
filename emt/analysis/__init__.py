"""Analysis of scored runs: onsets, peaks, lead times, uncertainty and summary tables.

Typical use::

    from emt.store import scores as store
    from emt.analysis import run_summary, headline_table
    d = store.load("outputs/<run>/scores.h5")
    table = headline_table([run_summary(d)])

``ruptures`` is needed only for the ``pelt`` and ``binseg`` onset methods.
"""

from emt.analysis.metrics import auc, coherence_drop, lead_time, lead_times_all_methods, peak, time_to_peak
from emt.analysis.onset import (
    DEFAULT_METHOD, METHODS, OnsetResult, detect, foot_onset_index, glr_detect_index, onset, threshold_onset_index,
)
from emt.analysis.summary import headline_table, parse_run_name, run_summary, tidy_table
from emt.analysis.uncertainty import (
    BootstrapResult, OnsetComparison, bootstrap, bootstrap_lead_time, bootstrap_onsets, checkpoint_se, mean_series,
    paired_seed_comparison, pooled_seeds, resampled_means, seeds_ci,
)

__all__ = [
    "DEFAULT_METHOD", "METHODS", "BootstrapResult", "OnsetComparison", "OnsetResult", "auc", "bootstrap_onsets",
    "checkpoint_se", "detect", "glr_detect_index", "paired_seed_comparison", "pooled_seeds", "bootstrap", "bootstrap_lead_time",
    "foot_onset_index",
    "coherence_drop", "headline_table", "lead_time", "lead_times_all_methods", "mean_series", "onset",
    "parse_run_name", "peak", "resampled_means", "run_summary", "seeds_ci", "threshold_onset_index",
    "tidy_table", "time_to_peak",
]
