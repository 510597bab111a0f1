"""The tagging service: member facts, the tag catalog and every member's tags."""
