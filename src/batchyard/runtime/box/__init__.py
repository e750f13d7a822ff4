"""The attempt box: what runs one attempt on a worker host (supervisor, sandbox,
workspace, environments, output pump, process tree, disk and network guards, log sink)."""
