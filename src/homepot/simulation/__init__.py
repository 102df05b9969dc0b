"""The fleet model (schedules, load, faults, labels) and its drivers: the live simulator, the
backfill of history, and the demo's in-process fleet."""
