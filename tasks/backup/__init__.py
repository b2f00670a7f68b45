"""The backup pipeline: the node service, its leases and uploads, the elector, status."""
