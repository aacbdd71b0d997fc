"""End-to-end tests: real ``mawex master`` / ``mawex worker`` processes on loopback."""
