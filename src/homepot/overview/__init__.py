"""The fleet at a glance: what the dashboard's first page and its error list show."""
