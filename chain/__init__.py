"""JSON-RPC client, ABI helpers and the signer: everything that talks to an EVM node."""
