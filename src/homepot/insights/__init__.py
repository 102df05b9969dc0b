"""Insights: what the collected data predicts — anomalies, failure risk, job success odds,
configuration impact across the fleet, recommended maintenance windows, API health."""
