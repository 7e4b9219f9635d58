"""`myco up`: a whole local mesh as child processes; identities (DESIGN §2)."""
