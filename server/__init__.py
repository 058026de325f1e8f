"""The outer layer: command line, HTTP/WebSocket API and editor hosting. Nothing imports it."""
