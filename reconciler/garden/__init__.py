"""garden"""
