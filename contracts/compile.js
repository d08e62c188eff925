#!/usr/bin/env node
// Compiles contracts/AlbumNFT.sol with the pinned npm `solc` into abis/AlbumNFT.json.
//
//   node contracts/compile.js          write abis/AlbumNFT.json
//   node contracts/compile.js --check  compile in memory; exit 1 if the committed artifact differs
//
// Source names stay relative to the repo root (imports as `@openzeppelin/contracts/...`, resolved
// from node_modules by the import callback) because solc hashes them into the metadata appended to
// the bytecode: absolute paths would make the artifact depend on where the repo is checked out.
"use strict";

const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..");
const CONTRACT_NAME = "AlbumNFT";
const SOURCE_NAME = "contracts/AlbumNFT.sol";
const ARTIFACT_PATH = path.join(ROOT, "abis", `${CONTRACT_NAME}.json`);
const NODE_MODULES = path.join(ROOT, "node_modules");

// Loaded from the repo's node_modules, not the caller's cwd, so the pinned compiler is used.
const solc = require(require.resolve("solc", { paths: [ROOT] }));

const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: {
    [SOURCE_NAME]: {
      [CONTRACT_NAME]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"],
    },
  },
};

function isInside(parent, child) {
  const rel = path.relative(parent, child);
  return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel);
}

// Package imports come from node_modules, anything else from the repo root; nothing may escape
// either folder, so a malicious import path cannot read arbitrary files.
function findImports(sourceName) {
  for (const base of [NODE_MODULES, ROOT]) {
    const candidate = path.resolve(base, sourceName);
    if (isInside(base, candidate) && fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, "utf8") };
    }
  }
  return { error: `import not found: ${sourceName}` };
}

function compile() {
  const input = {
    language: "Solidity",
    sources: {
      [SOURCE_NAME]: { content: fs.readFileSync(path.join(ROOT, SOURCE_NAME), "utf8") },
    },
    settings: SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

  const diagnostics = output.errors || [];
  const errors = diagnostics.filter((d) => d.severity === "error");
  for (const d of diagnostics.filter((d) => d.severity !== "error")) {
    process.stderr.write(d.formattedMessage || `${d.severity}: ${d.message}\n`);
  }
  if (errors.length > 0) {
    for (const d of errors) {
      process.stderr.write(d.formattedMessage || `error: ${d.message}\n`);
    }
    process.exit(1);
  }

  const contract = output.contracts[SOURCE_NAME][CONTRACT_NAME];
  return {
    contractName: CONTRACT_NAME,
    sourceName: SOURCE_NAME,
    abi: contract.abi,
    bytecode: `0x${contract.evm.bytecode.object}`,
    deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
    compiler: { name: "solc", version: solc.version(), settings: SETTINGS },
  };
}

function serialize(artifact) {
  return `${JSON.stringify(artifact, null, 2)}\n`;
}

function check(artifact) {
  const rel = path.relative(ROOT, ARTIFACT_PATH);
  if (!fs.existsSync(ARTIFACT_PATH)) {
    process.stderr.write(`${rel} is missing; run: node contracts/compile.js\n`);
    return 1;
  }
  const committedText = fs.readFileSync(ARTIFACT_PATH, "utf8");
  if (committedText === serialize(artifact)) {
    process.stdout.write(`${rel} is up to date\n`);
    return 0;
  }
  let committed;
  try {
    committed = JSON.parse(committedText);
  } catch (e) {
    process.stderr.write(`${rel} is not valid JSON (${e.message}); run: node contracts/compile.js\n`);
    return 1;
  }
  const keys = new Set([...Object.keys(committed), ...Object.keys(artifact)]);
  const differing = [...keys].filter(
    (k) => JSON.stringify(committed[k]) !== JSON.stringify(artifact[k]),
  );
  const what = differing.length > 0 ? `keys differ: ${differing.join(", ")}` : "formatting differs";
  process.stderr.write(`${rel} is stale (${what}); run: node contracts/compile.js\n`);
  return 1;
}

function main(argv) {
  const unknown = argv.filter((a) => a !== "--check");
  if (unknown.length > 0) {
    process.stderr.write(`unknown arguments: ${unknown.join(" ")}\nusage: compile.js [--check]\n`);
    return 2;
  }
  const artifact = compile();
  if (argv.includes("--check")) {
    return check(artifact);
  }
  fs.mkdirSync(path.dirname(ARTIFACT_PATH), { recursive: true });
  fs.writeFileSync(ARTIFACT_PATH, serialize(artifact));
  const size = (artifact.deployedBytecode.length - 2) / 2;
  process.stdout.write(
    `wrote ${path.relative(ROOT, ARTIFACT_PATH)} (solc ${artifact.compiler.version}, ` +
      `deployed bytecode ${size} bytes)\n`,
  );
  return 0;
}

process.exitCode = main(process.argv.slice(2));
