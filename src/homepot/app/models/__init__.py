"""Compatibility package: ``homepot.app.models.AnalyticsModel``."""
