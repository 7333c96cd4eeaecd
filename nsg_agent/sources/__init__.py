"""Where the desired state comes from: the ``DesiredSource`` seam (base.py) and its sources,
one module per outside system (files.py: files on disk, watched with watchdog). The daemon
reads a :class:`~nsg_agent.sources.base.Snapshot` from a source and is told when to read
again; it never learns where the state lives."""
