"""(command module: written by its owner)"""
