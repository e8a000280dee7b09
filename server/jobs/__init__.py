"""The asynchronous path (v2): the durable job store and the dispatcher that runs its jobs."""
