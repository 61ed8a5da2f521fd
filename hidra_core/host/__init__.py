"""The plugin host: pluggy hooks, stevedore drivers, and building drivers and endpoints from config."""
