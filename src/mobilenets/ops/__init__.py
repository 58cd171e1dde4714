"""Speed-ups for particular machines, applied to a built model or a process by one call."""
