"""Know the error rates on your own data: verification, calibration, identification, detection, liveness, speed.

Typical use (the ``faceprint eval`` / ``calibrate`` / ``bench`` commands are thin layers over this)::

    from faceprint import Pipeline
    from faceprint.evaluation import embed_images, evaluate_scores, read_pairs, score_pairs

    pairs = read_pairs("pairs.txt", root="lfw")
    embeddings = embed_images({p for pair in pairs for p in (pair.a, pair.b)}, Pipeline(), face="centre")
    result = evaluate_scores(score_pairs(pairs, embeddings), model_id="dlib-resnet-v1", source="pairs.txt")
    print(result.kfold.mean, result.tar_at_far)

The metric functions themselves (:mod:`faceprint.evaluation.metrics`) are plain NumPy on score arrays.
"""

from faceprint.evaluation.calibration import all_pair_scores, calibrate_identities, calibrate_pairs
from faceprint.evaluation.embedding import Embeddings, embed_images
from faceprint.evaluation.liveness import (
    LeaveSubjectsOut,
    LivenessEvaluation,
    evaluate_liveness,
    leave_subjects_out,
    liveness_samples,
    score_liveness,
)
from faceprint.evaluation.metrics import (
    KFoldResult,
    OpenSetPoint,
    OperatingPoint,
    RocCurve,
    best_accuracy,
    cmc,
    equal_error_rate,
    fnir_at_fpir,
    fnmr_at_fmr,
    kfold_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
)
from faceprint.evaluation.pairs import (
    Pair,
    PairFileError,
    folder_pairs,
    identity_folders,
    read_csv_pairs,
    read_lfw_pairs,
    read_pairs,
    read_people,
)
from faceprint.evaluation.verification import PairScores, VerificationResult, evaluate_scores, score_pairs

__all__ = [
    "Embeddings",
    "KFoldResult",
    "LeaveSubjectsOut",
    "LivenessEvaluation",
    "OpenSetPoint",
    "OperatingPoint",
    "Pair",
    "PairFileError",
    "PairScores",
    "RocCurve",
    "VerificationResult",
    "all_pair_scores",
    "best_accuracy",
    "calibrate_identities",
    "calibrate_pairs",
    "cmc",
    "embed_images",
    "equal_error_rate",
    "evaluate_liveness",
    "evaluate_scores",
    "fnir_at_fpir",
    "fnmr_at_fmr",
    "folder_pairs",
    "identity_folders",
    "kfold_accuracy",
    "leave_subjects_out",
    "liveness_samples",
    "read_csv_pairs",
    "read_lfw_pairs",
    "read_pairs",
    "read_people",
    "roc_auc",
    "roc_curve",
    "score_liveness",
    "score_pairs",
    "tar_at_far",
]
