"""The kiosk and staff pages: plain HTML, CSS and JavaScript shipped as package data (no build step)."""
