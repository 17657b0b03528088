"""The server's security layers, one small module each."""
