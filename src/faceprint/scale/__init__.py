"""Scale-out on existing engines: Ray Serve inference and bulk enrolment across processes (docs/deploy.md).

Nothing here imports Ray at import time: the default install does not need it. The modules that do
(``deployments``, ``ray_app``, ``server``, ``bulk``'s Ray analyser) import it when they are used.
"""
