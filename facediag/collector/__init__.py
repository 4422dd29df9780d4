"""The central collector (issue 13): MQTT results and status from every station into SQLite or PostgreSQL."""
