"""Support code shared by the test tiers (importable as ``support.*``)."""
