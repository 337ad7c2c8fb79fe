"""agentrl package."""
