"""An example tasks package for a celeriac image (see ../Dockerfile)."""
