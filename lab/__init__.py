"""The local lab: namespaced sshd hosts, the B2 emulator and the toplevel factory."""
