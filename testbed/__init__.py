"""The DeepCOD testbed, one package per role, in the order data flows through a run:

    config      scenario files -> a validated `Scenario` (schema, sweeps, gates)
    emulation   Scenario -> the emulated network: hosts, links, traffic, capture
    agents      the programs on the hosts: device and edge agents, their wire
                protocol and the typed job/record contract with the runner
    results     records -> summary, statistics, figures and report
    experiment  the driver that runs the steps above (one run, a sweep)

beside them the parts every step may use:

    models      model plugins: their API, registry, predictions, data, training
    offloaders  how a request crosses the network: one class per family
    fidelity    did the emulated link do what the scenario asked
    programs    every program started inside an emulated host, in one table

docs/design.md draws the same map with the contracts between the parts.
"""

from pathlib import Path

# The checkout the testbed runs from (this file's folder's parent): the programs started
# in hosts run there, so relative paths in a run mean what they meant to the command.
CHECKOUT = Path(__file__).resolve().parent.parent
