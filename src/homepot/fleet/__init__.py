"""The fleet: the device protocol, push channels, the terminal agent and the simulator."""
