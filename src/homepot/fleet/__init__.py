"""The server side of the device protocol: the agent API, the MQTT bridge, device keys."""
