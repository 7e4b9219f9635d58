"""`myco up`: a whole local mesh as child processes; identities (docs/ARCHITECTURE.md)."""
