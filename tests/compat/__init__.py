"""The compatibility matrix: one ``@pytest.mark.compat(area, feature, verdict)`` test per cell."""
