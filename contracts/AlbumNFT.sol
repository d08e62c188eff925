// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ERC721URIStorage} from "@openzeppelin/contracts/token/ERC721/extensions/ERC721URIStorage.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title AlbumNFT
/// @notice One ERC-721 token per minted music album, minted only by holders of MINTER_ROLE
///         (the Discograph mint relayer), so the chain is the single record of who owns which album.
/// @dev Per-token URIs come from ERC721URIStorage, whose `_setTokenURI` emits the ERC-4906
///      `MetadataUpdate` event; the indexer follows that event to refresh `token_uri` without
///      polling `tokenURI` for every token.
contract AlbumNFT is ERC721URIStorage, AccessControl {
    /// @notice Role allowed to mint albums and update their metadata URI.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @dev Ids start at 1 so that token id 0 never exists: off-chain code can treat 0 as "none".
    uint256 private _nextTokenId = 1;

    /// @notice Emitted once per mint, next to the standard `Transfer` from the zero address.
    /// @dev All three fields the indexer filters on are indexed, so they are decoded by slicing
    ///      topics; `albumId` is the album's UUID as 16 bytes, left-aligned in the bytes32 (the low
    ///      16 bytes are zero), which keeps the mapping back to the off-chain album lossless.
    /// @param tokenId The newly minted token id.
    /// @param albumId The album's UUID, 16 bytes left-aligned.
    /// @param to The first owner of the token.
    /// @param uri The token's metadata URI at mint time.
    event AlbumMinted(uint256 indexed tokenId, bytes32 indexed albumId, address indexed to, string uri);

    /// @notice Raised when the constructor is given the zero address as admin, which would leave
    ///         the contract with nobody able to grant MINTER_ROLE.
    error AlbumNFTZeroAdmin();

    /// @param name_ ERC-721 collection name.
    /// @param symbol_ ERC-721 collection symbol.
    /// @param admin Receives DEFAULT_ADMIN_ROLE and so decides who may mint.
    constructor(string memory name_, string memory symbol_, address admin) ERC721(name_, symbol_) {
        if (admin == address(0)) {
            revert AlbumNFTZeroAdmin();
        }
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice The id the next `mintAlbum` call will assign.
    function nextTokenId() external view returns (uint256) {
        return _nextTokenId;
    }

    /// @notice Mints the next token id to `to` for album `albumId` with metadata `uri`.
    /// @dev Uses `_mint`, not `_safeMint`: a receiver callback would run before our events are
    ///      emitted and could re-enter; the relayer mints to externally owned accounts anyway.
    ///      Event order within the transaction is Transfer, MetadataUpdate, AlbumMinted.
    /// @param to The first owner.
    /// @param albumId The album's UUID as 16 bytes, left-aligned in the bytes32.
    /// @param uri The metadata URI stored for the token.
    /// @return tokenId The id assigned to the new token.
    function mintAlbum(address to, bytes32 albumId, string calldata uri)
        external
        onlyRole(MINTER_ROLE)
        returns (uint256 tokenId)
    {
        tokenId = _nextTokenId++;
        _mint(to, tokenId);
        _setTokenURI(tokenId, uri);
        emit AlbumMinted(tokenId, albumId, to, uri);
    }

    /// @notice Replaces the metadata URI of an existing token.
    /// @dev Emits ERC-4906 `MetadataUpdate` through `_setTokenURI`, so indexers notice the change.
    ///      `_requireOwned` is needed because `_setTokenURI` alone would store a URI for a token
    ///      that does not exist.
    /// @param tokenId An existing token id.
    /// @param uri The new metadata URI.
    function setTokenURI(uint256 tokenId, string calldata uri) external onlyRole(MINTER_ROLE) {
        _requireOwned(tokenId);
        _setTokenURI(tokenId, uri);
    }

    /// @inheritdoc ERC721URIStorage
    /// @dev Advertises ERC-721, ERC-721 Metadata, ERC-4906 (0x49064906), AccessControl and ERC-165.
    function supportsInterface(bytes4 interfaceId)
        public
        view
        override(ERC721URIStorage, AccessControl)
        returns (bool)
    {
        return super.supportsInterface(interfaceId);
    }
}
