"""Keep a SQLite copy of each organization's directory users and groups from the bridge's topics."""
