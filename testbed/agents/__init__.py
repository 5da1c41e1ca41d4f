"""The programs on the emulated hosts and their contracts: the device agent (`device`)
runs requests against the edge agent (`edge`) over the binary wire protocol
(`protocol`), on the schedule of `arrivals`; `contract` types what the runner and the
device agent hand each other (job, metadata, request records)."""

from testbed.agents.contract import (
    PHASES,
    REQUEST_COLUMNS,
    Arrival,
    ContractError,
    DeviceJob,
    DeviceMeta,
    OffloaderJob,
    RequestRecord,
)

__all__ = [
    "PHASES",
    "REQUEST_COLUMNS",
    "Arrival",
    "ContractError",
    "DeviceJob",
    "DeviceMeta",
    "OffloaderJob",
    "RequestRecord",
]
