"""Built-in clipbot features, each a plugin registered like a third-party one."""
