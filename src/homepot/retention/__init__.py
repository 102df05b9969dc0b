"""Data retention: old analytics and operational rows pruned on a schedule."""
