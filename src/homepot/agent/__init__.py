"""What runs on a terminal: the agent, its on-disk outbox, its HTTP and MQTT clients."""
