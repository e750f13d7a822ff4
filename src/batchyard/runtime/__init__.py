"""The worker side: workspaces, child processes, log pumping, the worker pool."""
