"""Training utilities used by the `examples/` scripts: data loading and transforms, optimizer groups."""
