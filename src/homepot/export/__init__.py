"""Pseudonymized exports of the analytics tables for the AI team (CLI and admin API)."""
