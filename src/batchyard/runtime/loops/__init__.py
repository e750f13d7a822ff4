"""The loops: the worker pool, the scheduler, the delivery loop and the node heartbeat,
each a step driven by a thread."""
