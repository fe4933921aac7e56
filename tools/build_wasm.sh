#!/usr/bin/env bash
# Builds the WebAssembly SIMD kernels (rust_kernels/) into wasm/mamba_kernels.wasm.
#
#   bash tools/build_wasm.sh           build and copy to wasm/mamba_kernels.wasm
#   bash tools/build_wasm.sh --check   build into a temporary directory and fail (exit 1) if the
#                                      result differs byte-for-byte from the committed file
#
# Needs a rustc with the wasm32-unknown-unknown std and lld (Debian: rustc cargo
# libstd-rust-dev-wasm32 lld). /usr/bin/{cargo,rustc} are preferred over rustup's, which usually
# lack the wasm32 target; override with MAMBA_CARGO / MAMBA_RUSTC. No crates are downloaded.
#
# The build is reproducible: no debug info, stripped, one codegen unit, LTO, paths remapped, so
# the same compiler gives the same bytes from any checkout directory.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
crate="$root/rust_kernels"
out="$root/wasm/mamba_kernels.wasm"

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: bash tools/build_wasm.sh [--check]" >&2; exit 2 ;;
esac

pick() { # pick ENV_OVERRIDE DEBIAN_PATH NAME
  if [ -n "${1:-}" ]; then echo "$1"; elif [ -x "$2" ]; then echo "$2"; else command -v "$3" || true; fi
}
cargo_bin="$(pick "${MAMBA_CARGO:-}" /usr/bin/cargo cargo)"
rustc_bin="$(pick "${MAMBA_RUSTC:-}" /usr/bin/rustc rustc)"
if [ -z "$cargo_bin" ] || [ -z "$rustc_bin" ]; then
  echo "build_wasm: cargo/rustc not found (apt-get install rustc cargo libstd-rust-dev-wasm32 lld)" >&2
  exit 2
fi

if [ "$check" = 1 ]; then
  target_dir="$(mktemp -d "${TMPDIR:-/tmp}/mamba_wasm.XXXXXX")"
  trap 'rm -rf "$target_dir"' EXIT
else
  target_dir="$crate/target"
fi

# Flags separated by 0x1f (CARGO_ENCODED_RUSTFLAGS) so that paths with spaces survive.
sep=$'\x1f'
flags="-Ctarget-feature=+simd128${sep}-Cdebuginfo=0${sep}-Cstrip=symbols"
flags+="${sep}--remap-path-prefix=$crate=rust_kernels${sep}--remap-path-prefix=$root=."
if [ -n "${CARGO_HOME:-}" ]; then flags+="${sep}--remap-path-prefix=$CARGO_HOME=/cargo"; fi
if [ -n "${HOME:-}" ]; then flags+="${sep}--remap-path-prefix=$HOME=/home"; fi

(
  cd "$crate"
  env -u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_BUILD_TARGET \
    RUSTC="$rustc_bin" \
    CARGO_ENCODED_RUSTFLAGS="$flags" \
    CARGO_TARGET_DIR="$target_dir" \
    CARGO_INCREMENTAL=0 \
    "$cargo_bin" build --release --locked --offline --quiet --target wasm32-unknown-unknown
)
built="$target_dir/wasm32-unknown-unknown/release/mamba_kernels.wasm"
[ -f "$built" ] || { echo "build_wasm: cargo produced no $built" >&2; exit 1; }

if [ "$check" = 1 ]; then
  if [ ! -f "$out" ]; then
    echo "build_wasm --check: wasm/mamba_kernels.wasm is missing; run 'deno task build:wasm' and commit it" >&2
    exit 1
  fi
  if ! cmp -s "$built" "$out"; then
    echo "build_wasm --check: wasm/mamba_kernels.wasm is stale: a fresh build of rust_kernels/ differs" >&2
    echo "  committed: $(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1)" >&2
    echo "  fresh:     $(wc -c <"$built") bytes, sha256 $(sha256sum "$built" | cut -d' ' -f1)" >&2
    echo "  rebuild with 'deno task build:wasm' (compiler: $("$rustc_bin" --version)) and commit it" >&2
    exit 1
  fi
  echo "build_wasm --check: wasm/mamba_kernels.wasm is up to date ($(wc -c <"$out") bytes)"
else
  mkdir -p "$(dirname "$out")"
  cp "$built" "$out"
  chmod 644 "$out"
  echo "build_wasm: wrote wasm/mamba_kernels.wasm ($(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1))"
fi
