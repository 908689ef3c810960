"""Platform: the merlin environment check and ``full_build_job``, the build of everything from nothing."""
