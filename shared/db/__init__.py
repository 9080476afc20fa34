"""Redis: every key Kiln writes, the clients, and the Lua scripts."""
