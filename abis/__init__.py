"""Compiled contract artifacts (ABI + bytecode JSON), loaded by name through chain.abi."""
