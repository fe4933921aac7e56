#!/usr/bin/env bash
# Builds the WebAssembly SIMD kernels (rust_kernels/) twice, from the same sources:
#
#   wasm/mamba_kernels.wasm          plain SIMD128 (runs on every engine with wasm SIMD)
#   wasm/mamba_kernels_relaxed.wasm  SIMD128 + relaxed SIMD (`f32x4.relaxed_madd`: one FMA)
#
# The loader (src/backends/wasm/kernels.ts) picks the relaxed build when the engine validates a
# relaxed opcode, the plain one otherwise or when told to (MAMBA_WASM_SIMD=plain).
#
#   bash tools/build_wasm.sh           build both and copy them to wasm/
#   bash tools/build_wasm.sh --check   build into a temporary directory and fail (exit 1) if either
#                                      result differs byte-for-byte from the committed file
#
# Toolchain: Debian bookworm's rustc-web 1.96 (bookworm-security) with its library sources, and
# lld's wasm-ld:  apt-get install rustc-web cargo-web rust-web-src lld
# The wasm32 standard library is not packaged for rustc-web, so `core` is built from
# rust-web-src (`-Zbuild-std=core`, allowed on a stable compiler by RUSTC_BOOTSTRAP=1; the few
# crates that library workspace names come from its own vendor/ directory, nothing is
# downloaded). rustc-web conflicts with Debian's default rustc package; to keep that one on
# /usr/bin, unpack rustc-web and cargo-web elsewhere (dpkg-deb -x) and point MAMBA_RUSTC /
# MAMBA_CARGO at them (the library sources are found through the compiler's sysroot, /usr).
#
# The build is reproducible: no debug info, stripped, one codegen unit, LTO, paths remapped, an
# explicit linker (wasm-ld from the lld package), so the same compiler gives the same bytes from
# any checkout directory. The bytes depend on the compiler version, hence the version check.
set -euo pipefail

# The compiler the committed .wasm files were built with (`rustc --version`, first two words).
want_rustc="rustc 1.96.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
crate="$root/rust_kernels"

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
linker_bin="$(pick "${MAMBA_WASM_LD:-}" /usr/bin/wasm-ld wasm-ld)"
hint="apt-get install rustc-web cargo-web rust-web-src lld (bookworm-security), or set MAMBA_RUSTC / MAMBA_CARGO"
if [ -z "$cargo_bin" ] || [ -z "$rustc_bin" ] || [ -z "$linker_bin" ]; then
  echo "build_wasm: cargo, rustc or wasm-ld not found ($hint)" >&2
  exit 2
fi
have_rustc="$("$rustc_bin" --version | cut -d' ' -f1-2)"
if [ "$have_rustc" != "$want_rustc" ]; then
  echo "build_wasm: $rustc_bin is '$have_rustc', the committed .wasm files come from '$want_rustc'" >&2
  echo "  ($hint)" >&2
  exit 2
fi
sysroot="$("$rustc_bin" --print sysroot)"
std_src="$sysroot/lib/rustlib/src/rust/library"
if [ ! -f "$std_src/Cargo.lock" ] || [ ! -d "$std_src/vendor" ]; then
  echo "build_wasm: no library sources at $std_src (apt-get install rust-web-src)" >&2
  exit 2
fi

if [ "$check" = 1 ]; then
  target_root="$(mktemp -d "${TMPDIR:-/tmp}/mamba_wasm.XXXXXX")"
  trap 'rm -rf "$target_root"' EXIT
else
  target_root="$crate/target"
fi

# build NAME FEATURES: builds rust_kernels with the given target features into $target_root/NAME.
build() {
  # Flags separated by 0x1f (CARGO_ENCODED_RUSTFLAGS) so that paths with spaces survive. They
  # also apply to the `core` that -Zbuild-std compiles, so it gets the same features.
  local sep=$'\x1f'
  local flags="-Ctarget-feature=$2${sep}-Cdebuginfo=0${sep}-Cstrip=symbols"
  flags+="${sep}-Clinker=$linker_bin${sep}-Clinker-flavor=wasm-ld"
  # Keep the source order of the instructions: LLVM's default pre-RA scheduling hoists the x
  # broadcasts of the packed GEMM's microkernel ahead of their uses, which keeps 20 vectors live
  # where V8 has 15 registers (spills: 0.6x the speed); in source order 15 fit.
  flags+="${sep}-Cllvm-args=-pre-RA-sched=source"
  flags+="${sep}--remap-path-prefix=$crate=rust_kernels${sep}--remap-path-prefix=$root=."
  flags+="${sep}--remap-path-prefix=$std_src=/rustc/library"
  if [ -n "${CARGO_HOME:-}" ]; then flags+="${sep}--remap-path-prefix=$CARGO_HOME=/cargo"; fi
  if [ -n "${HOME:-}" ]; then flags+="${sep}--remap-path-prefix=$HOME=/home"; fi
  (
    cd "$crate"
    env -u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_BUILD_TARGET \
      RUSTC="$rustc_bin" \
      RUSTC_BOOTSTRAP=1 \
      CARGO_ENCODED_RUSTFLAGS="$flags" \
      CARGO_TARGET_DIR="$target_root/$1" \
      CARGO_INCREMENTAL=0 \
      "$cargo_bin" build --release --locked --offline --quiet --target wasm32-unknown-unknown \
      -Zbuild-std=core \
      --config 'source.crates-io.replace-with="mamba-std-vendor"' \
      --config "source.mamba-std-vendor.directory=\"$std_src/vendor\""
  )
  local built="$target_root/$1/wasm32-unknown-unknown/release/mamba_kernels.wasm"
  [ -f "$built" ] || { echo "build_wasm: cargo produced no $built" >&2; exit 1; }
}

# finish NAME FILE: copies (or, with --check, compares) the build NAME to wasm/FILE.
status=0
finish() {
  local built="$target_root/$1/wasm32-unknown-unknown/release/mamba_kernels.wasm"
  local out="$root/wasm/$2"
  if [ "$check" = 1 ]; then
    if [ ! -f "$out" ]; then
      echo "build_wasm --check: wasm/$2 is missing; run 'deno task build:wasm' and commit it" >&2
      status=1
    elif ! cmp -s "$built" "$out"; then
      echo "build_wasm --check: wasm/$2 is stale: a fresh build of rust_kernels/ differs" >&2
      echo "  committed: $(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1)" >&2
      echo "  fresh:     $(wc -c <"$built") bytes, sha256 $(sha256sum "$built" | cut -d' ' -f1)" >&2
      echo "  rebuild with 'deno task build:wasm' ($("$rustc_bin" --version)) and commit it" >&2
      status=1
    else
      echo "build_wasm --check: wasm/$2 is up to date ($(wc -c <"$out") bytes)"
    fi
  else
    mkdir -p "$(dirname "$out")"
    cp "$built" "$out"
    chmod 644 "$out"
    echo "build_wasm: wrote wasm/$2 ($(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1))"
  fi
}

build plain +simd128
build relaxed +simd128,+relaxed-simd
finish plain mamba_kernels.wasm
finish relaxed mamba_kernels_relaxed.wasm
exit "$status"
