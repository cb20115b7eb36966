"""Small Protocols to the outside world (metrics, traffic) and their implementations."""
