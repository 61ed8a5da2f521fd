"""Analysis clients served by the sender: signals, registrations, host policy, targets and dispatch."""
