"""The websocket feed (`WS /ws/events`): outbox rows, live and resumable, to every client."""
