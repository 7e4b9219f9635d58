"""spore"""
