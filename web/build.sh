#!/bin/sh
# Build the web page's script and styles into app/static/ (or the directory given) from the
# lockfile: `npm ci` installs exactly what package-lock.json names, esbuild bundles and minifies,
# and manifest.mjs records hashes of every input and output. Same inputs, same bytes: the test
# suite rebuilds into a temporary directory and compares.
set -eu
cd "$(dirname "$0")"
out="$(cd "${1:-../app/static}" && pwd)"

# --ignore-scripts: esbuild's binary comes from its platform package; nothing needs to run.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
esbuild=node_modules/.bin/esbuild
common="--bundle --minify --legal-comments=none --charset=utf8 --log-level=warning"
$esbuild src/main.js $common --format=iife --target=es2020 --outfile="$out/app.js"
$esbuild src/style.css $common --outfile="$out/app.css"
node manifest.mjs "$out"
echo "built $out/app.js $out/app.css"
