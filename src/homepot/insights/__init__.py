"""Insights: what the collected data predicts: anomaly episodes, failure risk, recommended
maintenance windows."""
