"""Evaluation: accuracy on original/shuffled/reversed clips, class groups, frozen-feature protocols.

The engine (per-epoch validation), the audit and the CLI all evaluate through this layer."""
