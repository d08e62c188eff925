// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title BenchTransfers
/// @notice Bench only: an ERC-721-shaped ledger that emits the standard `Transfer` event as cheaply
///         as possible, so `bench/backfill.py` can build a chain with 100,000+ transfers quickly.
/// @dev Not a token: no approvals, no receiver checks and no access control; anyone may mint or
///      move anything. Never deploy it anywhere but a throw-away bench chain.
contract BenchTransfers {
    /// @notice The ERC-721 event, with the standard signature so real indexers pick it up.
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);

    /// @notice `moveIds` and `moveTo` have different lengths.
    error BenchLengthMismatch();

    /// @notice A move names a token that was never minted.
    error BenchNotMinted(uint256 tokenId);

    /// @notice Current owner of each token (zero for ids never minted), as ERC-721's `ownerOf`.
    mapping(uint256 => address) public ownerOf;

    /// @notice The id the next mint gets; ids start at 1, as in AlbumNFT.
    uint256 public nextTokenId = 1;

    /// @notice Mint the next `mintTo.length` ids to `mintTo[i]`, then move `moveIds[j]` to `moveTo[j]`.
    /// @dev Mints come first, so a move may name a token minted earlier in the same call.
    /// @param mintTo The first owner of each new token, in id order.
    /// @param moveIds Existing tokens to move.
    /// @param moveTo The new owner of each `moveIds` entry.
    function emitBlock(
        address[] calldata mintTo,
        uint256[] calldata moveIds,
        address[] calldata moveTo
    ) external {
        if (moveIds.length != moveTo.length) {
            revert BenchLengthMismatch();
        }
        uint256 id = nextTokenId;
        for (uint256 i = 0; i < mintTo.length; ++i) {
            ownerOf[id] = mintTo[i];
            emit Transfer(address(0), mintTo[i], id);
            ++id;
        }
        nextTokenId = id;
        for (uint256 j = 0; j < moveIds.length; ++j) {
            uint256 tokenId = moveIds[j];
            address from = ownerOf[tokenId];
            if (from == address(0)) {
                revert BenchNotMinted(tokenId);
            }
            ownerOf[tokenId] = moveTo[j];
            emit Transfer(from, moveTo[j], tokenId);
        }
    }
}
