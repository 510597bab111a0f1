"""Economy rules: points for orders by rule, level benefits, and the invite clawback."""
