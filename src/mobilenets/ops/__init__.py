"""Speed-ups for particular machines, applied to a built model or a process by one call:
``cpu.optimize(model)`` (its layers in ``layers`` and ``depthwise``) and ``cpu.keep_freed_memory()``."""
