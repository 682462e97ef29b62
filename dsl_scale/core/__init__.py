"""The ground floor: what every layer shares (seeding, atomic file writes, the batch type, framework patches).
Nothing here imports from another dsl_scale package."""
