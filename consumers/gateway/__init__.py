"""The real-time gateway (`geodispatch gateway`): the pipeline's tracking, assignments and presence
pushed to rider, driver and support apps over Socket.IO and SSE, on seed 002's channels, behind its
JWT access rules; and the live operator map (docs/GATEWAY.md)."""
