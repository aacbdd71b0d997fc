"""Message schemas of every channel; strict (unknown fields are rejected), no sockets."""
