"""A code-review bot: one batch job per revision range, a signed webhook when it ends."""
