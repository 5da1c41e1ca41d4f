"""The programs on the emulated hosts and their contracts: the device agent (`device`)
runs requests against the edge agent (`edge`) over the binary wire protocol
(`protocol`)."""
