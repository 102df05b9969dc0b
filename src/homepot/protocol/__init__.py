"""The wire protocol both ends of the device connection speak: messages, MQTT topics and
details, and the push-channel interface the orchestrator hands jobs to."""
