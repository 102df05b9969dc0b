"""Insights: what the collected data says about the fleet (anomaly episodes, for now)."""
