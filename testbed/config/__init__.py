"""Scenario files: YAML -> a validated, resolved `Scenario` (with file:line errors),
sweep grids and `expect:` gates. Nothing here touches the network.

validation.py is the checks a schema is made of, yaml_source.py reads YAML with the
line of every key, schema.py is the scenario's schema, scenario.py its types and
loading, sweep.py grids of scenarios, gates.py the `expect:` comparisons.
"""

from testbed.config.scenario import LinkSpec, Scenario, load_scenario, parse_scenario
from testbed.config.sweep import Sweep, load_sweeps

__all__ = ["LinkSpec", "Scenario", "Sweep", "load_scenario", "load_sweeps", "parse_scenario"]
