"""Client-side engine shared by tctl, tsh, tbot and the dashboard."""
