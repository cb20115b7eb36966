"""What several test tiers share: test doubles and helpers, never tests."""
