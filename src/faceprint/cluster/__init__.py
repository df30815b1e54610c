"""Face clustering for photo libraries: group unknown faces into people, with feedback that sticks.

    from faceprint.cluster import cluster, faces_from_images
    found = faces_from_images(paths, pipeline)            # every face of every photo
    result = cluster(found.faces, model_id=pipeline.model_id, fmr=1e-3)
    for c in result.clusters: print(c.id, c.size, c.cohesion)
    result = feedback.merge(result, 1, 2)                 # stored as a must-link, applied by later runs

See ``docs/clustering.md``.
"""

from faceprint.cluster import feedback
from faceprint.cluster.core import (
    DEFAULT_METHOD,
    MAX_DENSE,
    METHODS,
    Cluster,
    Clustering,
    Constraints,
    Face,
    as_faces,
    assign,
    cluster,
    face_id,
)
from faceprint.cluster.faces import FaceSet, faces_from_images

__all__ = [
    "DEFAULT_METHOD",
    "MAX_DENSE",
    "METHODS",
    "Cluster",
    "Clustering",
    "Constraints",
    "Face",
    "FaceSet",
    "as_faces",
    "assign",
    "cluster",
    "face_id",
    "faces_from_images",
    "feedback",
]
