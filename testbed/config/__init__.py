"""Scenario files: YAML -> a validated, resolved `Scenario` (with file:line errors),
sweep grids and `expect:` gates. Nothing here touches the network."""
