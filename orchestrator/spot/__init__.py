"""Spot clusters rehearsed: a simulated cluster on Ray's autoscaler, trace-driven preemptions, and the goodput and cost planner."""
